"""The strategy interface: how a piece of domain knowledge enters training.

The task modules call these hooks and never branch on a strategy's name, so a new strategy is
one subclass + one YAML. Each hook's default is plain supervised training; a strategy
overrides only the hooks its knowledge needs:

- `backbone_kwargs`  change how the backbone is built (pretrained weights, 2.5D input channels);
- `prepare`          cached pre-stage (source pre-training, feature extraction, shape AE);
- `build_net`        wrap or extend the network (extra heads, fusion branches, decoders);
- `on_train_epoch_start`  pacing that depends on the epoch (self-paced thresholds);
- `train_sampler`    change which samples are drawn (curriculum);
- `transform_batch`  change a batch before the forward pass (ROI crops, extra channels);
- `loss_terms`       weight samples / add loss terms (self-paced, attention supervision);
- `postprocess`      change outputs before metrics (decision-level fusion, clean-up);
- `extra_metrics`    strategy-specific numbers logged as val/… and test/… (auxiliary Dice, …);
- `metadata`         facts the run folder must record (e.g. which ROI is used at test time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Sampler

from dkbench.backbones.base import Backbone, IncompatibleInputError
from dkbench.backbones.registry import dense_backbones
from dkbench.data.spec import DatasetArrays, DatasetSpec
from dkbench.metrics.classification import num_outputs

CLASSIFICATION_TASKS = frozenset({"binary", "multiclass", "multilabel"})
SEGMENTATION_TASKS = frozenset({"segmentation"})
ALL_TASKS = CLASSIFICATION_TASKS | SEGMENTATION_TASKS


class IncompatibleStrategyError(ValueError):
    """A strategy cannot run on a dataset; the message names what is missing."""


@dataclass
class StrategyContext:
    """What a pre-stage may use: the data, a way to build backbones, a cache folder, the device."""

    arrays: DatasetArrays
    cache_dir: Path
    seed: int
    make_backbone: Any  # (**overrides) -> Backbone, with the run's settings + backbone_kwargs
    config: dict = field(default_factory=dict)
    #: (overrides) -> composed run config, e.g. to pre-train on another dataset
    compose: Any = None
    #: The device the run's Trainer will use (`dkbench.runner.devices.trainer_device`): pre-stage
    #: networks train and infer there, then hand back / cache CPU tensors, so cache files do not
    #: depend on it. CPU by default (tests, and callers that build a context by hand).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class ClassifierNet(nn.Module):
    """Backbone + linear head; returns the outputs strategies and metrics read."""

    def __init__(self, backbone: Backbone, num_out: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.num_features, num_out)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding, "feature_map": feature_map}


class SegmenterNet(nn.Module):
    """Dense backbone (full-resolution decoder features) + 1×1 convolution to class logits."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if getattr(backbone, "output_stride", None) != 1:
            raise IncompatibleInputError(
                f"backbone {type(backbone).__name__} returns downsampled features; segmentation needs a dense "
                f"backbone (decoder at full resolution): {', '.join(dense_backbones())}"
            )
        self.backbone = backbone
        conv = nn.Conv3d if backbone.spatial_dims == 3 else nn.Conv2d
        self.head = conv(backbone.num_features, max(int(num_classes), 2), kernel_size=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        return {"logits": self.head(feature_map), "feature_map": feature_map,
                "embedding": self.backbone.pool(feature_map)}


def task_net(backbone: Backbone, spec: DatasetSpec, dropout: float = 0.0) -> nn.Module:
    """The plain network of a task: classifier head or segmentation head on the backbone."""
    if spec.task in SEGMENTATION_TASKS:
        return SegmenterNet(backbone, spec.num_classes)
    return ClassifierNet(backbone, num_outputs(spec.task, spec.num_classes), dropout)


class Strategy:
    """Base class; subclasses set `name`, `requires`, `tasks`, `citation` and override hooks."""

    name: ClassVar[str] = ""
    #: Keys of DatasetSpec.provides the strategy needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    tasks: ClassVar[frozenset[str]] = CLASSIFICATION_TASKS
    #: The paper the strategy follows (SURVEY.md's representative method).
    citation: ClassVar[str] = ""
    #: Whether validation computes HD95 (the segmentation module sets it from ``model.val_hd95``);
    #: a strategy reporting HD95 variants of its own (e.g. ``hd95_raw``) follows it, so that by
    #: default validation costs no CPU distance transforms.
    val_hd95: bool = False

    def __init__(self, **options: Any):
        self.options = options

    # --- compatibility -------------------------------------------------------------------
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        """None if the strategy can run on the dataset (and backbone registry key, when given),
        else the reason, which the runner records for the cell."""
        if spec.task not in self.tasks:
            return (
                f"strategy '{self.name}' supports tasks {sorted(self.tasks)}; dataset "
                f"'{spec.name}' is a {spec.task} task"
            )
        lacking = self.requires - spec.provides
        if lacking:
            return (
                f"strategy '{self.name}' requires {sorted(self.requires)}; dataset '{spec.name}' "
                f"provides {sorted(spec.provides) or 'nothing beyond images and labels'} "
                f"(missing: {sorted(lacking)})"
            )
        return None

    def check_compatible(self, spec: DatasetSpec, backbone: str | None = None) -> None:
        reason = self.incompatibility(spec, backbone)
        if reason:
            raise IncompatibleStrategyError(reason)

    # --- hooks ---------------------------------------------------------------------------
    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        """Overrides for `create_backbone` (e.g. `pretrained=True`, `in_chans=3, spatial_dims=2`)."""
        return {}

    def prepare(self, context: StrategyContext) -> None:
        """Run (or load from cache) a pre-stage before the network is built."""

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        return task_net(backbone, spec, self.options.get("dropout", 0.0))

    def train_sampler(self, dataset: Any) -> Sampler | None:
        """A sampler for the training split. Keep its length constant across epochs (Lightning
        fixes the number of batches per epoch once); implement `set_epoch(epoch)` to pace it."""
        return None

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Called by the module at the start of every training epoch."""

    def transform_batch(self, batch: dict, stage: str) -> dict:
        return batch

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """Named loss terms; the module sums them. Default: the mean task loss."""
        return {"task": per_sample_loss.mean()}

    def postprocess(self, outputs: dict, batch: dict) -> dict:
        return outputs

    def extra_metrics(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """Scalars averaged over the epoch's batches and logged as `<stage>/<name>`."""
        return {}

    def metadata(self) -> dict[str, Any]:
        return {"strategy": self.name, "citation": self.citation, "options": dict(self.options)}
