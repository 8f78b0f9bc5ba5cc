"""The backbone registry and `create_backbone`, the one way the rest of dkbench builds one.

Each module of `dkbench.backbones.zoo` registers factories with `@register_backbone(name)`.
A factory has the signature

    factory(*, in_chans: int, spatial_dims: int, img_size: int, pretrained: bool, **kwargs)
        -> Backbone

and builds the network (library-provided weights when `pretrained`, offline, or a clear
`WeightsUnavailableError`). Local files (`backbone.weights`) are loaded by `create_backbone`
through `load_local_weights`, unless the factory sets `accepts_weights = True` and takes a
`weights=` path itself (timm: `pretrained_cfg_overlay=dict(file=...)`). A factory whose
`pretrained=True` loads a local file offline says which through a `pretrained_file(spatial_dims)`
attribute (`pretrained_weights_file` asks it; strategies use it to refuse cells cheaply).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dkbench.backbones.base import Backbone
from dkbench.backbones.weights import check_weights_file, load_local_weights
from dkbench.registry import Registry

BackboneFactory = Callable[..., Backbone]

BACKBONES: Registry[BackboneFactory] = Registry("backbone", package="dkbench.backbones.zoo")
register_backbone = BACKBONES.register


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob pattern (timm's `list_models`)."""
    return BACKBONES.names(pattern)


def pretrained_weights_file(name: str, spatial_dims: int = 2) -> str | None:
    """The local file `create_backbone(name, pretrained=True)` loads offline, or None when
    backbone `name` has none here (nothing is built). A factory answers through an optional
    `pretrained_file(spatial_dims) -> str | None` attribute; factories without one have none."""
    locate = getattr(BACKBONES.get(name), "pretrained_file", None)
    return locate(spatial_dims) if callable(locate) else None


def is_dense(name: str) -> bool:
    """Whether backbone `name` returns full-resolution features (a segmentation backbone).
    Factories say so with a `dense = True` attribute."""
    return bool(getattr(BACKBONES.get(name), "dense", False))


def dense_backbones() -> list[str]:
    return [name for name in BACKBONES.names() if is_dense(name)]


def task_incompatibility(name: str, task: str) -> str | None:
    """Why backbone `name` cannot serve `task` (None if it can): segmentation needs a dense one,
    detection an encoder whose stages give a feature pyramid (`dkbench.backbones.pyramid`)."""
    if name not in BACKBONES:
        return f"backbone '{name}' is not installed here (optional extra missing)"
    if task == "segmentation" and not is_dense(name):
        return (f"backbone '{name}' is an encoder without a decoder; segmentation needs a dense backbone: "
                f"{', '.join(dense_backbones())}")
    if task == "detection":  # the detector reads a feature pyramid out of the encoder's stages
        from dkbench.backbones.pyramid import pyramid_incompatibility

        return pyramid_incompatibility(name)
    return None


def create_backbone(
    name: str,
    *,
    in_chans: int,
    spatial_dims: int = 2,
    img_size: int,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Backbone:
    """Build backbone `name` for `in_chans`-channel inputs of `img_size` px.

    `weights` (a local state_dict / Lightning checkpoint) overrides `pretrained`: the
    library weights are then not loaded at all. Raises `UnknownNameError` (listing the
    valid names), `IncompatibleInputError` when the input does not fit the network, and
    FileNotFoundError naming `backbone.weights` for a missing file.
    """
    factory = BACKBONES.get(name)
    if weights is not None:
        weights = check_weights_file(weights)  # fail before building anything
    accepts_weights = getattr(factory, "accepts_weights", False)
    build_kwargs = dict(kwargs)
    if accepts_weights:
        build_kwargs["weights"] = weights
    backbone = factory(
        in_chans=in_chans,
        spatial_dims=spatial_dims,
        img_size=img_size,
        pretrained=bool(pretrained) and weights is None,
        **build_kwargs,
    )
    backbone.check_input(in_chans, img_size)
    if weights is not None and not accepts_weights:
        load_local_weights(backbone, weights)
    backbone.backbone_name = name
    return backbone
