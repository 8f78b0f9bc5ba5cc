"""transfer_natural: the ImageNet weights are really loaded (tensor equality with the shipped
file), a linear probe keeps the backbone frozen (parameters and BatchNorm statistics) while
its head learns, fine-tuning moves the backbone, and backbones without offline weights are
refused with the reason."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone, pretrained_weights_file
from dkbench.backbones.weights import adapt_stem_weight, read_checkpoint
from dkbench.data.loading import spec_from_config
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, create_strategy

LITE0 = "efficientnet_lite0"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def breast_spec():
    return spec_from_config(compose_config(["dataset=breastmnist"]).dataset)  # 1 channel, 28 px


class _Arrays:
    """A dataset with only its spec: build_net reads nothing else here."""

    def __init__(self, spec):
        self.spec = spec


def _build(strategy, spec, backbone=LITE0):
    """What train.py does: a backbone factory with the strategy's backbone kwargs, then build_net."""
    def make(**overrides):
        return create_backbone(backbone, **{"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims,
                                            "img_size": spec.size, **strategy.backbone_kwargs(spec), **overrides})

    return strategy.build_net(BuildContext(arrays=_Arrays(spec), make_backbone=make))


def _file_state(backbone) -> dict[str, torch.Tensor]:
    """The shipped file's tensors under the backbone's key names (its own remap)."""
    return backbone.remap_state_dict(read_checkpoint(pretrained_weights_file(LITE0)))


def _train_step(net, spec, steps: int = 2):
    torch.manual_seed(0)
    batch = {"image": torch.randn(8, spec.in_chans, spec.size, spec.size), "label": torch.arange(8) % 2}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(batch)["logits"], batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_pretrained_weights_query_is_offline_and_cheap():
    path = pretrained_weights_file(LITE0)
    assert path is not None and path.endswith(".pth")
    assert pretrained_weights_file(LITE0, spatial_dims=3) is None  # the shipped weights are 2D
    assert pretrained_weights_file("tinycnn") is None and pretrained_weights_file("resnet18_28") is None


def test_backbones_without_offline_weights_are_refused_with_the_reason(breast_spec):
    strategy = create_strategy("transfer_natural")
    for backbone in ("tinycnn", "resnet18_28"):
        reason = strategy.incompatibility(breast_spec, backbone)
        assert reason and f"'{backbone}'" in reason and "no" in reason and "offline" in reason
        assert "backbone.weights" in reason and "efficientnet_lite0" in reason
    assert strategy.incompatibility(breast_spec, LITE0) is None
    # a local file (backbone.weights, mirrored into the options by the YAML) lifts the refusal
    cfg = compose_config(["strategy=transfer_natural", "backbone=resnet18_28", "backbone.weights=/some/file.pth"])
    lifted = create_strategy(cfg.strategy.method, **dict(cfg.strategy.options))
    assert lifted.incompatibility(breast_spec, "resnet18_28") is None
    adrenal = spec_from_config(compose_config(["dataset=adrenalmnist3d"]).dataset)
    assert "3D" in strategy.incompatibility(adrenal, LITE0)


def test_imagenet_weights_are_really_loaded(breast_spec):
    strategy = create_strategy("transfer_natural", freeze=False)
    net = _build(strategy, breast_spec)
    built, shipped = net.backbone.state_dict(), _file_state(net.backbone)
    # a deep conv, a BN's running statistics, the head conv: bit-identical to the file
    for key in ("_blocks.5.13._project_conv.weight", "_blocks.2.4._bn1.running_var", "_conv_head.weight"):
        assert torch.equal(built[key], shipped[key]), key
    # grey input: the RGB stem kernels summed over channels
    assert torch.equal(built["_conv_stem.weight"], adapt_stem_weight(shipped["_conv_stem.weight"], 1))
    # the run folder gets the file and its sha256
    meta = strategy.metadata()["pretrained_weights"]
    assert meta["file"] == pretrained_weights_file(LITE0)
    assert meta["sha256"] == hashlib.sha256(open(meta["file"], "rb").read()).hexdigest()
    # a random init does not match (the equality above is not vacuous)
    scratch = create_backbone(LITE0, in_chans=1, img_size=28).state_dict()
    assert not torch.equal(scratch["_conv_head.weight"], shipped["_conv_head.weight"])


def test_linear_probe_keeps_backbone_frozen_and_trains_head(breast_spec):
    net = _build(create_strategy("transfer_natural", freeze=True), breast_spec)
    backbone_before, head_before = _snapshot(net.backbone), _snapshot(net.head)
    _train_step(net, breast_spec)
    assert not net.backbone.training and net.head.training  # .train() keeps the backbone in eval
    after = net.backbone.state_dict()
    for key, value in backbone_before.items():  # weights AND BatchNorm running stats
        assert torch.equal(after[key], value), key
    assert not torch.equal(net.head.weight, head_before["weight"])


def test_fine_tune_moves_the_backbone(breast_spec):
    net = _build(create_strategy("transfer_natural", freeze=False), breast_spec)
    before = _snapshot(net.backbone)
    _train_step(net, breast_spec)
    after = net.backbone.state_dict()
    assert not torch.equal(after["_conv_head.weight"], before["_conv_head.weight"])
    assert not torch.equal(after["_bn1.running_mean"], before["_bn1.running_mean"])


def test_linear_probe_end_to_end_leaves_imagenet_backbone_untouched(tiny_run):
    """Through Lightning (which calls .train() every epoch): the trained checkpoint still holds
    the shipped ImageNet tensors, BatchNorm statistics included; only the head moved."""
    metrics, run_dir = tiny_run(f"backbone={LITE0}", "strategy=transfer_natural_linear")
    assert (run_dir / "DONE").exists() and 0.0 <= metrics["test/auroc"] <= 1.0
    state = torch.load(run_dir / "checkpoints" / "best_weights.pt", map_location="cpu", weights_only=True)["state_dict"]
    reference = create_backbone(LITE0, in_chans=1, img_size=64, pretrained=True).state_dict()
    for key, value in reference.items():
        assert torch.equal(state[f"net.backbone.{key}"], value), key
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["mode"].startswith("linear probe")
    assert meta["pretrained_weights"]["sha256"] and meta["pretrained_weights"]["file"].endswith(".pth")


def test_linear_variant_inherits_the_fine_tune_options():
    """transfer_natural_linear.yaml sets freeze only; the rest comes from transfer_natural.yaml."""
    cfg = compose_config(["strategy=transfer_natural_linear", "backbone.weights=/some/file.pth"])
    assert cfg.strategy.name == "transfer_natural_linear" and cfg.strategy.method == "transfer_natural"
    options = create_strategy(cfg.strategy.method, **dict(cfg.strategy.options)).options
    assert options.freeze is True and options.allow_download is False and options.dropout == 0.0
    assert options.local_weights == "/some/file.pth"
    assert create_strategy("transfer_natural").options.freeze is False


def test_a_detector_starts_from_the_imagenet_encoder_and_the_linear_probe_is_refused():
    """Detection (issue 18): the RetinaNet's feature pyramid reads the stages of the very backbone the
    strategy loaded, so the shipped ImageNet tensors are the detector's encoder; a baseline detector's
    are not. The linear probe builds a classifier head, so it is refused for detection."""
    from types import SimpleNamespace

    from dkbench.data.detection import pad_boxes
    from dkbench.models.detector import DetectorNet

    spec = spec_from_config(compose_config(["dataset=probe_det"]).dataset)
    train = SimpleNamespace(label=pad_boxes([np.array([[4, 6, 20, 18]]), np.zeros((0, 4)),
                                             np.array([[30, 30, 44, 40], [2, 2, 12, 12]])]))

    def build(name):
        strategy = create_strategy(name)

        def make(**overrides):
            return create_backbone(LITE0, **{"in_chans": spec.in_chans, "spatial_dims": 2, "img_size": spec.size,
                                             **strategy.backbone_kwargs(spec), **overrides})

        arrays = SimpleNamespace(spec=spec, splits={"train": train})
        return strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, config={}))

    net, scratch = build("transfer_natural"), build("baseline")
    assert isinstance(net, DetectorNet)
    shipped, built = _file_state(net.backbone), net.backbone.state_dict()
    for key in ("_blocks.5.13._project_conv.weight", "_blocks.2.4._bn1.running_var"):
        assert torch.equal(built[key], shipped[key]), key
        assert not torch.equal(scratch.backbone.state_dict()[key], shipped[key]), key
    reason = create_strategy("transfer_natural", freeze=True).incompatibility(spec, LITE0)
    assert reason and "detector" in reason
