"""Multi-scale features from dkbench's encoder backbones, and a feature pyramid over them.

A detector needs feature maps at several strides (Lin et al., "Feature Pyramid Networks for
Object Detection", CVPR 2017). MONAI's ready extractors (`resnet_fpn_feature_extractor`,
`BackboneWithFPN`) import torchvision, which cannot be installed beside this stack's CPU torch
(STACK.md), so this module reads the stages out of dkbench's own backbones instead, which keeps
every backbone's weights and initialisation — an ImageNet-initialised EfficientNet-Lite0 is used
exactly as `transfer_natural` loads it — and adds MONAI's FPN *block*
(`monai.networks.blocks.feature_pyramid_network.FeaturePyramidNetwork`, top-down pathway with
lateral 1×1 and output 3×3 convolutions), which does not import torchvision.

Each supported backbone class is described as a *chain*: the sequence of computations its
`forward_features` runs (stem, stage 1, stage 2, …). Running the chain on a small dummy input
gives each stage's stride and channels, so no stride is written down twice. The pyramid uses, for
every stride, the deepest stage with that stride, and of those the `levels` coarsest with stride
≤ `max_stride` (default 3 levels up to 16: strides 4, 8, 16 for ResNet-18 / EfficientNet-Lite0 /
DenseNet-121; 2, 4, 8 for tinycnn, whose deepest stride is 8). Stages deeper than the last
level are never run. Dense segmentation backbones (U-Nets) and classes without a chain are
refused with the list of backbones that can serve detection.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.errors import IncompatibleInputError

Stage = Callable[[torch.Tensor], torch.Tensor]


def _tiny(b: nn.Module) -> list[tuple[str, Stage]]:
    return [(f"blocks.{i}", block) for i, block in enumerate(b.blocks)]


def _resnet(b: nn.Module) -> list[tuple[str, Stage]]:
    def stem(x: torch.Tensor) -> torch.Tensor:
        return b.maxpool(b.act(b.bn1(b.conv1(x))))

    return [("stem", stem), ("layer1", b.layer1), ("layer2", b.layer2), ("layer3", b.layer3), ("layer4", b.layer4)]


def _efficientnet(b: nn.Module) -> list[tuple[str, Stage]]:
    def stem(x: torch.Tensor) -> torch.Tensor:
        return b._act(b._bn0(b._conv_stem(b._conv_stem_padding(x))))

    def head(x: torch.Tensor) -> torch.Tensor:
        return b._act(b._bn1(b._conv_head(b._conv_head_padding(x))))

    return [("stem", stem), *((f"_blocks.{i}", stage) for i, stage in enumerate(b._blocks)), ("head", head)]


def _densenet(b: nn.Module) -> list[tuple[str, Stage]]:
    return [(f"features.{name}", layer) for name, layer in b.features.named_children()]


#: backbone class name → its chain (by name: checking a tinycnn run imports no MONAI class)
CHAINS: dict[str, Callable[[nn.Module], list[tuple[str, Stage]]]] = {
    "TinyCNN": _tiny,
    "MonaiResNet": _resnet,
    "MonaiEfficientNet": _efficientnet,
    "MonaiDenseNet121": _densenet,
}


class EncoderPyramid(nn.Module):
    """The chosen stages of a backbone's chain: `forward(x)` → the stage outputs, finest first."""

    def __init__(self, backbone: Backbone, levels: int = 3, max_stride: int = 16, probe_size: int = 64):
        super().__init__()
        name = type(backbone).__name__
        if name not in CHAINS:
            raise IncompatibleInputError(
                f"backbone {getattr(backbone, 'backbone_name', name)} has no multi-scale encoder dkbench can read; "
                f"detection needs one of: {', '.join(pyramid_backbones())}")
        if getattr(backbone, "spatial_dims", 2) != 2:
            raise IncompatibleInputError("detection is 2-D here: the dataset has spatial_dims 3; use a 2-D dataset")
        self.body = backbone
        chain = CHAINS[name](backbone)
        shapes = _stage_shapes(backbone, chain, probe_size)
        deepest: dict[int, int] = {}  # stride → index of the deepest stage with that stride
        for i, (stride, _) in enumerate(shapes):
            if stride <= max_stride:
                deepest[stride] = i
        chosen = sorted(deepest.values())[-levels:]
        if len(chosen) < levels:
            raise IncompatibleInputError(
                f"backbone {getattr(backbone, 'backbone_name', name)} offers {len(chosen)} distinct strides up to "
                f"{max_stride}, the detector asks for {levels} levels: lower model.detector.levels or raise "
                f"model.detector.max_stride")
        self._chain = chain[: chosen[-1] + 1]  # stages after the last level are never run
        self.taps = tuple(chosen)
        self.stage_names = tuple(chain[i][0] for i in chosen)
        self.strides = tuple(shapes[i][0] for i in chosen)
        self.channels = tuple(shapes[i][1] for i in chosen)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, (_, stage) in enumerate(self._chain):
            x = stage(x)
            if i in self.taps:
                out.append(x)
        return out


def _stage_shapes(backbone: nn.Module, chain: list[tuple[str, Stage]], size: int) -> list[tuple[int, int]]:
    """(stride, channels) after each stage, from one dummy forward (eval mode: BatchNorm's
    running statistics are not touched; on the backbone's device, `meta` included)."""
    param = next(backbone.parameters())
    x = torch.zeros(1, backbone.in_chans, size, size, device=param.device, dtype=param.dtype)
    was_training = backbone.training
    backbone.eval()
    shapes = []
    try:
        with torch.no_grad():
            for _, stage in chain:
                x = stage(x)
                shapes.append((max(1, round(size / x.shape[-1])), int(x.shape[1])))
    finally:
        backbone.train(was_training)
    return shapes


class FeaturePyramidExtractor(nn.Module):
    """Encoder stages + MONAI's FPN block: `forward(images)` → OrderedDict of `out_channels`
    maps, finest first (what MONAI's `RetinaNet` takes as its `feature_extractor`)."""

    def __init__(self, backbone: Backbone, out_channels: int = 64, levels: int = 3, max_stride: int = 16):
        super().__init__()
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork

        self.encoder = EncoderPyramid(backbone, levels=levels, max_stride=max_stride)
        self.fpn = FeaturePyramidNetwork(spatial_dims=2, in_channels_list=list(self.encoder.channels),
                                         out_channels=out_channels)
        self.out_channels = out_channels  # RetinaNet reads it
        self.strides = self.encoder.strides

    @property
    def backbone(self) -> Backbone:
        return self.encoder.body

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.encoder(images)
        return self.fpn(OrderedDict((f"p{i}", s) for i, s in enumerate(stages)))


def pyramid_backbones() -> list[str]:
    """Registered backbone names whose class has a chain (they can serve detection)."""
    from dkbench.backbones.registry import BACKBONES

    return [name for name in BACKBONES.names() if _class_name(name) in CHAINS]


@lru_cache(maxsize=None)
def _class_name(name: str) -> str | None:
    """The class a registry entry builds, found by building it on the `meta` device (shapes
    only, no memory, no weights); None when it cannot be built that way."""
    from dkbench.backbones import create_backbone

    try:
        with torch.device("meta"):
            return type(create_backbone(name, in_chans=1, spatial_dims=2, img_size=64)).__name__
    except Exception:  # noqa: BLE001 - a factory that needs more than shapes: not a pyramid we know
        return None


def pyramid_incompatibility(name: str) -> str | None:
    """Why backbone `name` cannot serve detection, or None."""
    if _class_name(name) in CHAINS:
        return None
    return (f"backbone '{name}' has no multi-scale encoder dkbench can read (dense U-Nets and unknown classes); "
            f"detection needs one of: {', '.join(pyramid_backbones())}")
