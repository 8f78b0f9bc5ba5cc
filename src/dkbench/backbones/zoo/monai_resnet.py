"""ResNet-18/50 from MONAI (`monai.networks.nets.ResNet`), 2D and 3D.

* ``resnet18_28`` / ``resnet50_28``: the MedMNIST v2 ResNets for 28 px inputs (Yang et al.,
  "MedMNIST v2", Sci. Data 2023; experiments code ``MedMNIST2D/models.py``): a 3×3 stride-1
  stem conv and no max-pool, so a 28 px image keeps 28→28→14→7→4 px through the stages.
* ``resnet18`` / ``resnet50``: the standard ResNet (He et al., CVPR 2016) with a 7×7/2 stem
  and a 3×3/2 max-pool, for 64 px and larger images.

Key names equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``, ...;
downsample convs without bias), so a torchvision/timm ``resnet18`` ImageNet state dict passed
as ``backbone.weights`` loads (its ``fc`` is dropped; its stem is adapted to ``in_chans``).
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import no_offline_pretrained

_LAYERS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


class MonaiResNet(Backbone):
    """conv1 → bn1 → act → maxpool → layer1..4 of a MONAI ResNet (no avgpool / fc)."""

    stem_weight_key = "conv1.weight"

    def __init__(
        self,
        arch: str = "resnet18",
        *,
        in_chans: int = 3,
        spatial_dims: int = 2,
        small_input: bool = False,
        widen_factor: float = 1.0,
        norm: str | tuple = "batch",
    ):
        super().__init__()
        block, layers = _LAYERS[arch]
        net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_chans,
            conv1_t_size=3 if small_input else 7,
            conv1_t_stride=1 if small_input else 2,
            no_max_pool=small_input,
            shortcut_type="B",
            widen_factor=widen_factor,
            feed_forward=False,
            bias_downsample=False,  # as torchvision and the MedMNIST code
            norm=norm,
        )
        self.in_chans = in_chans
        self.spatial_dims = spatial_dims
        self.conv1, self.bn1, self.act = net.conv1, net.bn1, net.act
        self.maxpool = torch.nn.Identity() if small_input else net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = self.layer4[-1].bn2.num_features if block == "basic" else self.layer4[-1].bn3.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _factory(name: str, arch: str, small_input: bool):
    def build(*, in_chans: int, spatial_dims: int = 2, img_size: int | None = None, pretrained: bool = False, **kwargs):
        if pretrained:
            raise no_offline_pretrained(
                name, "a torchvision/timm ResNet state dict of the same depth loads" if not small_input else ""
            )
        return MonaiResNet(arch, in_chans=in_chans, spatial_dims=spatial_dims, small_input=small_input, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name}: {'MedMNIST 28 px' if small_input else 'standard'} {arch} (MONAI)."
    return register_backbone(name)(build)


resnet18_28 = _factory("resnet18_28", "resnet18", small_input=True)
resnet50_28 = _factory("resnet50_28", "resnet50", small_input=True)
resnet18 = _factory("resnet18", "resnet18", small_input=False)
resnet50 = _factory("resnet50", "resnet50", small_input=False)
