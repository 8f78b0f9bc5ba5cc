"""Contract tests for every registered backbone, and for local / shipped weight loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from dkbench.backbones import (
    BACKBONES,
    IncompatibleInputError,
    WeightsMismatchError,
    WeightsUnavailableError,
    create_backbone,
    load_local_weights,
)
from dkbench.registry import UnknownNameError

HAS_TIMM = importlib.util.find_spec("timm") is not None and "timm_resnet18" in BACKBONES
needs_timm = pytest.mark.skipif(
    not HAS_TIMM, reason="timm not installed (needs torchvision; pip install dkbench[timm])"
)

CORE = {
    "resnet18_28", "resnet50_28", "resnet18", "resnet50",
    "densenet121", "efficientnet_b0", "efficientnet_lite0", "tinycnn",
}  # fmt: skip
TIMM = {"timm_resnet18", "timm_efficientnet_b0", "timm_convnext_atto"}
NUM_FEATURES = {
    "resnet18_28": 512, "resnet50_28": 2048, "resnet18": 512, "resnet50": 2048, "densenet121": 1024,
    "efficientnet_b0": 1280, "efficientnet_lite0": 1280, "tinycnn": 96,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from threads, and 2 OpenMP threads on a busy 2-core machine
    spin-wait: measured here 60 s for this file with 2 threads under load vs 8 s with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def size_for(name: str) -> int:
    return 28 if name.endswith("_28") or name == "tinycnn" else 32


def lite0_file_state() -> dict[str, torch.Tensor]:
    from dkbench.backbones.zoo.monai_efficientnet import lite0_weights_path

    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


def test_registry_lists_core_backbones():
    names = set(BACKBONES.names())
    assert CORE <= names
    assert (TIMM <= names) if HAS_TIMM else not (TIMM & names)


@pytest.mark.parametrize(
    ("name", "in_chans"),
    [(n, 1) for n in BACKBONES.names() if n not in TIMM] + [("resnet18_28", 3), ("efficientnet_lite0", 3)],
)
def test_forward_shapes_2d(name, in_chans):
    size = size_for(name)
    torch.manual_seed(0)
    bb = create_backbone(name, in_chans=in_chans, img_size=size)
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        fmap = bb.forward_features(x)  # train mode (batch statistics)
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, bb.num_features)
    assert bb.num_features == NUM_FEATURES.get(name, bb.num_features)
    bb.eval()
    with torch.no_grad():
        fmap, emb = bb.forward_features(x), bb(x)
    assert emb.shape == (2, bb.num_features)
    assert torch.allclose(emb, bb.pool(fmap))
    assert torch.isfinite(emb).all()


def test_resnet18_28_keeps_medmnist_resolution():
    bb = create_backbone("resnet18_28", in_chans=1, img_size=28)
    assert bb.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 512, 4, 4)
    assert bb.conv1.kernel_size == (3, 3) and bb.conv1.stride == (1, 1)
    std = create_backbone("resnet18", in_chans=1, img_size=64)
    assert std.conv1.kernel_size == (7, 7) and std.conv1.stride == (2, 2)
    assert std.forward_features(torch.randn(2, 1, 64, 64)).shape == (2, 512, 2, 2)


@pytest.mark.parametrize("name", ["resnet18_28", "tinycnn"])
def test_forward_3d(name):
    bb = create_backbone(name, in_chans=1, spatial_dims=3, img_size=28)
    x = torch.randn(2, 1, 28, 28, 28)
    fmap = bb.forward_features(x)
    assert fmap.dim() == 5 and fmap.shape[:2] == (2, bb.num_features)
    assert bb.pool(fmap).shape == (2, bb.num_features)


def test_gradients_reach_the_stem():
    bb = create_backbone("tinycnn", in_chans=1, img_size=28)
    bb(torch.randn(2, 1, 28, 28)).sum().backward()
    assert bb.blocks[0][0].weight.grad is not None and bb.blocks[0][0].weight.grad.abs().sum() > 0


def test_densenet_refuses_28px():
    with pytest.raises(IncompatibleInputError, match="32"):
        create_backbone("densenet121", in_chans=1, img_size=28)


def _backbone_yamls_declaring_min_size():
    import yaml

    from dkbench.config import config_dir

    found = []
    for path in sorted((config_dir() / "backbone").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg.get("min_size"):
            found.append(cfg)
    return found


@pytest.mark.parametrize("cfg", _backbone_yamls_declaring_min_size(), ids=lambda c: c["name"])
def test_declared_min_size_is_what_the_backbone_enforces(cfg):
    """The pre-flight refuses a too-small input from the YAML's `min_size` before importing the
    network's library; the network itself (built on the meta device) must agree."""
    if cfg["arch"] not in BACKBONES:
        pytest.skip(f"{cfg['arch']} needs an optional extra")
    with torch.device("meta"):
        create_backbone(cfg["arch"], in_chans=1, img_size=cfg["min_size"])
        with pytest.raises(IncompatibleInputError):
            create_backbone(cfg["arch"], in_chans=1, img_size=cfg["min_size"] - 1)


def test_the_backbones_that_need_32px_declare_it():
    assert {c["name"] for c in _backbone_yamls_declaring_min_size()} >= {"densenet121", "timm_convnext_atto"}


def test_tinycnn_is_tiny():
    n = sum(p.numel() for p in create_backbone("tinycnn", in_chans=1, img_size=28).parameters())
    assert 50_000 <= n <= 100_000


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        create_backbone("resnet17", in_chans=1, img_size=28)
    assert "resnet18_28" in str(err.value) and "tinycnn" in str(err.value)


# ---------------------------------------------------------------- shipped ImageNet weights


def test_efficientnet_lite0_loads_every_shipped_tensor():
    file = lite0_file_state()
    assert len(file) == 296
    bb = create_backbone("efficientnet_lite0", in_chans=3, img_size=28, pretrained=True)
    own = bb.state_dict()
    assert len(own) == 294  # all but the 1000-class _fc.weight / _fc.bias
    mapped = bb.remap_state_dict({k: v for k, v in file.items() if not k.startswith("_fc.")})
    assert set(mapped) == set(own)
    for k, v in mapped.items():
        assert torch.equal(own[k], v), k
    assert torch.equal(own["_blocks.0.0._depthwise_conv.weight"], file["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(own["_blocks.6.15._project_conv.weight"], file["_blocks.15._project_conv.weight"])


def test_efficientnet_lite0_one_channel_sums_stem():
    file = lite0_file_state()
    bb1 = create_backbone("efficientnet_lite0", in_chans=1, img_size=32, pretrained=True).eval()
    assert torch.allclose(bb1._conv_stem.weight, file["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(bb1._blocks[0][0]._depthwise_conv.weight, file["_blocks.0._depthwise_conv.weight"])
    bb3 = create_backbone("efficientnet_lite0", in_chans=3, img_size=32, pretrained=True).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():  # grey image: 1-channel net == RGB net on the grey image as RGB
        assert torch.allclose(bb1(x), bb3(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_efficientnet_lite0_imagenet_head_sanity():
    """The shipped weights + their ImageNet head recognise scikit-image's bundled photos
    (preprocessing (x/255 - 0.5)/0.5); a constant image gives a deterministic output."""
    skdata = pytest.importorskip("skimage.data")
    file = lite0_file_state()
    bb = create_backbone("efficientnet_lite0", in_chans=3, img_size=224, pretrained=True).eval()
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": file["_fc.weight"], "bias": file["_fc.bias"]})

    def prep(img):
        x = torch.as_tensor(img).permute(2, 0, 1).float()[None]
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        return (x / 255 - 0.5) / 0.5

    with torch.no_grad():
        try:
            cat, coffee = prep(skdata.chelsea()), prep(skdata.coffee())
        except Exception as exc:  # noqa: BLE001 - sample photos missing from this install
            pytest.skip(f"scikit-image sample photos unavailable: {exc}")
        logits = fc(bb(torch.cat([cat, coffee])))
        top1 = logits.argmax(-1).tolist()
        assert top1[0] in {281, 282, 285}  # tabby / tiger cat / Egyptian cat
        assert top1[1] == 967  # espresso
        grey = torch.full((1, 3, 224, 224), -1.0)
        p1, p2 = fc(bb(grey)).softmax(-1), fc(bb(grey)).softmax(-1)
        assert torch.equal(p1, p2) and p1.max() > 2 * p1.min()


def test_pretrained_without_offline_weights_is_a_clear_error():
    for name in ["resnet18_28", "densenet121", "tinycnn"]:
        with pytest.raises(WeightsUnavailableError, match="backbone.weights"):
            create_backbone(name, in_chans=1, img_size=32, pretrained=True)


def test_efficientnet_b0_pretrained_offline(tmp_path, monkeypatch):
    """No hub file → clear error; a lukemelas-style (flat-key) file in the hub cache loads."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="backbone.weights"):
        create_backbone("efficientnet_b0", in_chans=3, img_size=32, pretrained=True)
    src = create_backbone("efficientnet_b0", in_chans=3, img_size=32)
    flat = {}
    for k, v in src.state_dict().items():  # nested _blocks.{stage}.{i}. → flat _blocks.{i}.
        parts = k.split(".")
        flat[".".join(parts[:1] + parts[2:]) if parts[0] == "_blocks" else k] = v
    flat["_fc.weight"], flat["_fc.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)
    (tmp_path / "checkpoints").mkdir()
    torch.save(flat, tmp_path / "checkpoints" / "efficientnet-b0-355c32eb.pth")
    bb = create_backbone("efficientnet_b0", in_chans=1, img_size=32, pretrained=True)
    assert torch.equal(bb._blocks[6][0]._se_reduce.weight, src._blocks[6][0]._se_reduce.weight)
    assert torch.allclose(bb._conv_stem.weight, src._conv_stem.weight.sum(1, keepdim=True))


# ---------------------------------------------------------------- local weight files


def _fresh(name="tinycnn", in_chans=1, seed=0, **kw):
    torch.manual_seed(seed)
    bb = create_backbone(name, in_chans=in_chans, img_size=28, **kw)
    with torch.no_grad():  # give BN buffers non-default values too
        for m in bb.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return bb


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_load_local_weights_round_trip(tmp_path):
    src, dst = _fresh(seed=1), _fresh(seed=2)
    assert not torch.equal(src.blocks[0][0].weight, dst.blocks[0][0].weight)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    load_local_weights(dst, path)
    _assert_same(src, dst)
    via_factory = create_backbone("tinycnn", in_chans=1, img_size=28, weights=str(path))
    _assert_same(src, via_factory)


def test_load_lightning_checkpoint_with_prefix(tmp_path, caplog):
    src = _fresh("resnet18_28", seed=1)
    state = {f"model.backbone.{k}": v for k, v in src.state_dict().items()}
    state["model.backbone.fc.weight"] = torch.zeros(10, 512)  # a classifier inside the prefix
    state["model.head.weight"] = torch.zeros(2, 512)  # other modules of the LightningModule
    state["model.head.bias"] = torch.zeros(2)
    ckpt = {"epoch": 3, "global_step": 99, "state_dict": state, "hyper_parameters": {"lr": 0.001}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    with caplog.at_level("WARNING", logger="dkbench"):
        dst = create_backbone("resnet18_28", in_chans=1, img_size=28, weights=str(path))
    _assert_same(src, dst)
    # the partial load names what it left behind
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "1 classifier key(s) [fc.weight]" in said
    assert "2 key(s) outside prefix 'model.backbone.' [model.head.bias, model.head.weight]" in said
    # DataParallel-style prefix, plain state dict
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "dp.pth")
    _assert_same(src, load_local_weights(_fresh("resnet18_28", seed=3), tmp_path / "dp.pth"))


def test_stem_channel_adaptation(tmp_path):
    rgb = _fresh(in_chans=3, seed=1).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = load_local_weights(_fresh(in_chans=1, seed=2), tmp_path / "rgb.pth").eval()
    assert torch.allclose(grey.blocks[0][0].weight, rgb.blocks[0][0].weight.sum(1, keepdim=True))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)
    # 1 → 3: repeat and divide by 3
    torch.save(grey.state_dict(), tmp_path / "grey.pth")
    back = load_local_weights(_fresh(in_chans=3, seed=3), tmp_path / "grey.pth").eval()
    assert torch.allclose(back.blocks[0][0].weight, grey.blocks[0][0].weight.repeat(1, 3, 1, 1) / 3)
    with torch.no_grad():
        assert torch.allclose(back(x.repeat(1, 3, 1, 1)), grey(x), atol=1e-5)


def test_mismatched_weights_list_keys(tmp_path):
    torch.save(_fresh("resnet18_28").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing \(\d+\): blocks\.0\.0\.weight"):
        load_local_weights(_fresh("tinycnn"), tmp_path / "r18.pth")


def test_densenet_loads_torchvision_style_keys(tmp_path):
    src = create_backbone("densenet121", in_chans=3, img_size=32)
    tv = {k.replace(".layers.", "."): v for k, v in src.state_dict().items()}
    tv["classifier.weight"], tv["classifier.bias"] = torch.zeros(1000, 1024), torch.zeros(1000)
    torch.save(tv, tmp_path / "densenet121_tv.pth")
    dst = create_backbone("densenet121", in_chans=3, img_size=32, weights=str(tmp_path / "densenet121_tv.pth"))
    _assert_same(src, dst)


def test_weights_override_pretrained(tmp_path):
    src = create_backbone("efficientnet_lite0", in_chans=1, img_size=28)
    torch.save(src.state_dict(), tmp_path / "mine.pth")
    mine = str(tmp_path / "mine.pth")
    dst = create_backbone("efficientnet_lite0", in_chans=1, img_size=28, pretrained=True, weights=mine)
    _assert_same(src, dst)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="backbone.weights") as err:
        create_backbone("tinycnn", in_chans=1, img_size=28, weights=str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match="backbone.weights"):
        load_local_weights(_fresh(), missing)


# ---------------------------------------------------------------- timm (optional extra)


@needs_timm
@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_backbones(name):
    bb = create_backbone(name, in_chans=1, img_size=32)
    x = torch.randn(2, 1, 32, 32)
    fmap = bb.forward_features(x)
    assert fmap.shape[:2] == (2, bb.num_features)
    assert bb(x).shape == (2, bb.num_features)


@needs_timm
def test_timm_local_weights(tmp_path):
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("resnet18", num_classes=1000)  # a timm/hub-style file with its fc
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    dst = create_backbone("timm_resnet18", in_chans=1, img_size=32, weights=str(tmp_path / "r18.pth"))
    assert torch.allclose(dst.model.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(dst.model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    # a dkbench Lightning checkpoint (keys model.backbone.model.*)
    src = create_backbone("timm_convnext_atto", in_chans=3, img_size=32)
    ckpt = {"state_dict": {f"model.backbone.{k}": v for k, v in src.state_dict().items()}}
    ckpt["state_dict"]["model.head.weight"] = torch.zeros(2, 320)
    torch.save(ckpt, tmp_path / "last.ckpt")
    dst = create_backbone("timm_convnext_atto", in_chans=3, img_size=32, weights=str(tmp_path / "last.ckpt"))
    _assert_same(src, dst)
    with pytest.raises(IncompatibleInputError, match="32"):
        create_backbone("timm_convnext_atto", in_chans=3, img_size=28)


class _Planted:
    """Unpickling this runs code: what a hostile weights file would carry."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_WEIGHTS",))


def test_weights_file_with_pickled_objects_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _fresh("resnet18_28", seed=1)
    torch.save({"state_dict": src.state_dict(), "hyper_parameters": _Planted()}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsMismatchError, match="never unpickles") as err:
        load_local_weights(_fresh("resnet18_28", seed=2), tmp_path / "evil.ckpt")
    assert "state_dict (tensors only)" in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "PWNED_BY_WEIGHTS").exists()
