"""timm backbones (Wightman, "PyTorch Image Models"), registered only when `import timm` works.

timm hard-imports torchvision, which cannot sit beside the default CPU torch of dkbench's
environment (see STACK.md), so it is the optional extra ``pip install dkbench[timm]``.
Without it this module registers nothing and imports cleanly.

* ``timm_resnet18``: timm ``resnet18`` (torchvision-style ResNet-18, 7×7/2 stem).
* ``timm_efficientnet_b0``: timm ``efficientnet_b0``.
* ``timm_convnext_atto``: timm ``convnext_atto`` (ConvNeXt, Liu et al., CVPR 2022; 3.7 M
  parameters); stride-4 stem and three 2× downsamplings, so inputs ≥ 32 px.

2D only. ``backbone.weights`` is first loaded with dkbench's strict `load_local_weights`
(timm / hub state dicts and dkbench Lightning checkpoints, keys ``model.backbone.model.*``;
stem adapted to ``in_chans``, classifier dropped). Only a file in a foreign layout that it
rejects (e.g. original FB ConvNeXt or TF-ported EfficientNet checkpoints, which timm converts
with its checkpoint filters) goes to timm as ``pretrained_cfg_overlay=dict(file=...)``. Not
the other way round: with ``num_classes=0`` timm loads non-strictly and, as checked with
timm 1.0.31, silently leaves the model random for a prefixed Lightning checkpoint (only a
warning). ``pretrained=true`` without a file uses timm's hub download, which needs the network.
"""

from __future__ import annotations

import logging

import torch

from dkbench.backbones.base import Backbone, IncompatibleInputError
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import WeightsMismatchError, WeightsUnavailableError, load_local_weights

log = logging.getLogger(__name__)

try:  # timm drags in torchvision; any failure there means "not installed" for dkbench
    import timm
except Exception as exc:  # noqa: BLE001
    timm = None
    log.debug("timm backbones not registered: %s", exc)

TIMM_MODELS = {
    "timm_resnet18": ("resnet18", 1),
    "timm_efficientnet_b0": ("efficientnet_b0", 1),
    "timm_convnext_atto": ("convnext_atto", 32),
}


class TimmBackbone(Backbone):
    """A timm model without classifier and global pool; `forward_features` is timm's."""

    def __init__(self, model: torch.nn.Module, min_size: int = 1):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.min_size = min_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    @staticmethod
    def remap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our keys are ``model.<timm key>``: prefix every file key with ``model.`` and let the
        prefix search strip what is in front (``""`` for a timm file, ``model.backbone.``
        after this for a dkbench Lightning checkpoint)."""
        return {f"model.{k}": v for k, v in state.items()}


def _factory(name: str, timm_name: str, min_size: int):
    def build(
        *,
        in_chans: int,
        spatial_dims: int = 2,
        img_size: int | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        **kwargs,
    ) -> Backbone:
        if spatial_dims != 2:
            raise IncompatibleInputError(f"{name} is 2D only; for 3D data use e.g. backbone=resnet18_28")

        def create(pretrained: bool, **extra):
            return TimmBackbone(
                timm.create_model(
                    timm_name, pretrained=pretrained, in_chans=in_chans, num_classes=0, global_pool="", **extra
                ),
                min_size=min_size,
            )

        if weights is not None:
            try:
                return load_local_weights(create(False, **kwargs), weights)
            except WeightsMismatchError as exc:
                log.warning(
                    "%s: %s does not fit directly (%s); handing it to timm's loader, which converts foreign "
                    "layouts but loads non-strictly: check timm's warnings about missing/unexpected keys",
                    name, weights, str(exc).splitlines()[0],
                )
                return create(True, pretrained_cfg_overlay=dict(file=weights), **kwargs)
        try:
            return create(pretrained, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if not pretrained:
                raise
            raise WeightsUnavailableError(
                f"{name}: timm could not load pretrained weights ({exc}). Offline, pass a local file "
                f"with `backbone.weights=/path/to/{timm_name}.pth` (or .safetensors)."
            ) from exc

    build.__name__ = name
    build.__doc__ = f"{name}: timm `{timm_name}` feature extractor."
    build.accepts_weights = True  # create_backbone passes `weights=` to build (see module doc)
    return register_backbone(name)(build)


if timm is not None:
    for _name, (_timm_name, _min_size) in TIMM_MODELS.items():
        globals()[_name] = _factory(_name, _timm_name, _min_size)
