"""Dense (segmentation) backbones from MONAI's U-Net family, 2D or 3D.

A dense backbone returns full-resolution decoder features (`output_stride = 1`); the task's
1×1 head turns them into class logits, so every strategy sees the same `feature_map` /
`embedding` contract as with classification encoders. The MONAI network is built with
``out_channels = features`` and used as the feature extractor.

* ``unet``: residual U-Net (Kerfoot et al., 2018; MONAI ``UNet``) after Ronneberger et al.,
  MICCAI 2015.
* ``attention_unet``: Attention U-Net (Oktay et al., MIDL 2018; MONAI ``AttentionUnet``):
  attention gates on the skip connections.
* ``segresnet``: SegResNet (Myronenko, BrainLes 2018; MONAI ``SegResNet``) without the VAE
  branch.

None has ImageNet weights offline; `unet_efficientnet_lite0` (efficientnet_unet.py) does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AttentionUnet, SegResNet, UNet
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import no_offline_pretrained


class DenseBackbone(Backbone):
    """A MONAI dense network whose output channels are the feature map."""

    output_stride = 1

    def __init__(self, net: nn.Module, num_features: int, spatial_dims: int, min_size: int):
        super().__init__()
        self.net = net
        self.num_features = int(num_features)
        self.spatial_dims = int(spatial_dims)
        self.min_size = int(min_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def check_input(self, in_chans: int, size: int) -> None:
        super().check_input(in_chans, size)
        if size % self.min_size:
            from dkbench.backbones.base import IncompatibleInputError

            raise IncompatibleInputError(
                f"backbone {type(self.net).__name__} downsamples by {self.min_size}: the input size ({size}px) "
                f"must be a multiple of it; resize the dataset (dataset.resize=…) or change backbone.kwargs.strides"
            )


def _downsampling(strides: Sequence[int]) -> int:
    out = 1
    for s in strides:
        out *= int(s)
    return out


def _refuse_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise no_offline_pretrained(name, "use backbone=unet_efficientnet_lite0 for an ImageNet encoder")


@register_backbone("unet")
def unet(
    *, in_chans: int, spatial_dims: int = 2, img_size: int = 64, pretrained: bool = False,
    channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2), num_res_units: int = 1,
    features: int = 16, dropout: float = 0.0,
) -> Backbone:
    """unet: MONAI residual U-Net (Ronneberger et al. 2015; Kerfoot et al. 2018)."""
    _refuse_pretrained("unet", pretrained)
    net = UNet(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=features, channels=tuple(channels),
               strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)
    return DenseBackbone(net, features, spatial_dims, _downsampling(strides))


@register_backbone("attention_unet")
def attention_unet(
    *, in_chans: int, spatial_dims: int = 2, img_size: int = 64, pretrained: bool = False,
    channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2), features: int = 16,
    dropout: float = 0.0,
) -> Backbone:
    """attention_unet: MONAI Attention U-Net (Oktay et al., MIDL 2018)."""
    _refuse_pretrained("attention_unet", pretrained)
    net = AttentionUnet(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=features,
                        channels=tuple(channels), strides=tuple(strides), dropout=dropout)
    return DenseBackbone(net, features, spatial_dims, _downsampling(strides))


@register_backbone("segresnet")
def segresnet(
    *, in_chans: int, spatial_dims: int = 2, img_size: int = 64, pretrained: bool = False,
    init_filters: int = 8, blocks_down: Sequence[int] = (1, 2, 2, 4), features: int = 16, dropout: float | None = None,
) -> Backbone:
    """segresnet: MONAI SegResNet (Myronenko 2018), no VAE branch."""
    _refuse_pretrained("segresnet", pretrained)
    net = SegResNet(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=features,
                    init_filters=init_filters, blocks_down=tuple(blocks_down), dropout_prob=dropout)
    return DenseBackbone(net, features, spatial_dims, 2 ** (len(blocks_down) - 1))


for _factory in (unet, attention_unet, segresnet):
    _factory.dense = True
