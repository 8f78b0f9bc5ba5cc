"""``unet_efficientnet_lite0``: a U-Net whose encoder is EfficientNet-Lite0 (ImageNet offline).

The encoder is dkbench's `efficientnet_lite0` (MONAI EfficientNet, Lite0 blocks, ReLU6), so
`pretrained=True` loads the same shipped ImageNet weights into it and `transfer_natural`
applies to segmentation. The decoder follows the U-Net / FlexibleUNet pattern (Ronneberger
et al. 2015; MONAI ``FlexibleUNet``): skips at strides 2, 4, 8, 16 (ends of the 16-, 24-, 40-
and 112-channel stages), the 320-channel stage at stride 32 as the bottleneck; each decoder
step upsamples ×2 (nearest), concatenates the skip and applies two 3×3 conv-BN-ReLU. The
1280-channel head conv of the classifier is not used. Decoder weights always start random.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dkbench.backbones.base import Backbone, IncompatibleInputError
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import load_state_dict_into, read_checkpoint
from dkbench.backbones.zoo.monai_efficientnet import (
    LITE0_BLOCKS,
    MonaiEfficientNet,
    _b0_params,
    _lite0_pretrained_file,
    lite0_weights_path,
)

#: Encoder stages whose outputs are skips (strides 2, 4, 8, 16) and the bottleneck (32).
SKIP_STAGES = (0, 1, 2, 4)
BOTTLENECK_STAGE = 6


def _conv_block(cin: int, cout: int, conv: type[nn.Module], norm: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
    )


class EfficientNetUNet(Backbone):
    output_stride = 1
    min_size = 32

    def __init__(self, encoder: MonaiEfficientNet, decoder_channels: Sequence[int] = (128, 64, 32, 24, 16)):
        super().__init__()
        self.encoder = encoder
        self.spatial_dims = encoder.spatial_dims
        conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if self.spatial_dims == 3 else nn.BatchNorm2d
        stage_out = [stage[-1]._project_conv.out_channels for stage in encoder._blocks]
        skips = [stage_out[i] for i in reversed(SKIP_STAGES)] + [0]  # stride 16, 8, 4, 2, then none
        channels = [stage_out[BOTTLENECK_STAGE], *decoder_channels]
        if len(decoder_channels) != len(skips):
            raise ValueError(f"decoder_channels needs {len(skips)} entries (one per ×2 upsampling)")
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList(
            _conv_block(channels[i] + skips[i], channels[i + 1], conv, norm) for i in range(len(skips))
        )
        self.num_features = channels[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        h = enc._act(enc._bn0(enc._conv_stem(enc._conv_stem_padding(x))))
        skips = []
        for i, stage in enumerate(enc._blocks):
            h = stage(h)
            if i in SKIP_STAGES:
                skips.append(h)
            if i == BOTTLENECK_STAGE:
                break
        for block, skip in zip(self.decoder, [*reversed(skips), None]):
            h = self.up(h)
            h = block(h if skip is None else torch.cat([h, skip], 1))
        return h

    def check_input(self, in_chans: int, size: int) -> None:
        super().check_input(in_chans, size)
        if size % 32:
            raise IncompatibleInputError(
                f"unet_efficientnet_lite0 downsamples by 32: the input size ({size}px) must be a multiple of 32; "
                f"resize the dataset (dataset.resize=…)"
            )


@register_backbone("unet_efficientnet_lite0")
def unet_efficientnet_lite0(
    *, in_chans: int, spatial_dims: int = 2, img_size: int = 128, pretrained: bool = False,
    decoder_channels: Sequence[int] = (128, 64, 32, 24, 16), **kwargs,
) -> Backbone:
    """unet_efficientnet_lite0: U-Net decoder on an EfficientNet-Lite0 encoder (ImageNet weights offline)."""
    encoder = MonaiEfficientNet(LITE0_BLOCKS, in_chans=in_chans, spatial_dims=spatial_dims, img_size=img_size,
                                act="relu6", **{**_b0_params(), **kwargs})
    if pretrained:
        if spatial_dims != 2:
            from dkbench.backbones.weights import WeightsUnavailableError

            raise WeightsUnavailableError("unet_efficientnet_lite0: the shipped ImageNet weights are 2D")
        path = lite0_weights_path()
        load_state_dict_into(encoder, read_checkpoint(path), source=path)
    return EfficientNetUNet(encoder, decoder_channels)


unet_efficientnet_lite0.dense = True
unet_efficientnet_lite0.pretrained_file = _lite0_pretrained_file
