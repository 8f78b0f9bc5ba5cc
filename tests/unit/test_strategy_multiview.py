"""`multiview` (3DCE / CVR-RCNN): each view reaches its own branch (late fusion) or its own
input channels (channel fusion), in order; a 3D volume becomes the centre slices, in order, of
a 2D backbone; datasets with a single 2D view are refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.strategies import BuildContext, create_strategy
from dkbench.strategies.catalogue.multiview import centre_slices, slab_bounds, volume_to_views

VIEWS = frozenset({"views", "mask"})


def _spec(name="probe", provides=VIEWS, dims=2, size=16, in_chans=1) -> DatasetSpec:
    return DatasetSpec(name=name, task="binary", num_classes=2, in_chans=in_chans, spatial_dims=dims,
                       size=size, provides=frozenset(provides))


def _build(spec, available=None, **options):
    """build_net with a context like the runner's (views array + backbone factory)."""
    strategy = create_strategy("multiview", **options)
    shape = (2, spec.in_chans) + (spec.size,) * spec.spatial_dims
    extras = {"views": np.zeros((2, available, spec.in_chans, spec.size, spec.size), np.uint8)} if available else {}
    split = SplitArrays(image=np.zeros(shape, np.uint8), label=np.zeros(2, np.int64),
                        ids=np.array(["a", "b"]), extras=extras)
    arrays = DatasetArrays(spec=spec, splits={"train": split, "val": split, "test": split})
    base = {"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims, "img_size": spec.size,
            **strategy.backbone_kwargs(spec)}

    def make(**overrides):
        return create_backbone("tinycnn", **{**base, **overrides})

    return strategy, strategy.build_net(BuildContext(arrays=arrays, make_backbone=make,
                                                     cache_dir=Path("/nonexistent"), seed=0))


def _capture(backbone, store, key):
    """Record what a tinycnn backbone's conv stack receives (forward_features bypasses forward)."""
    return backbone.blocks.register_forward_pre_hook(lambda m, args: store.setdefault(key, []).append(args[0].detach()))


def _constant_views(b=2, v=3, c=1, size=16):
    """View k of every sample is filled with the value 10·k + channel."""
    vals = torch.arange(v)[:, None] * 10.0 + torch.arange(c)[None]
    return vals[None, :, :, None, None].expand(b, v, c, size, size).clone()


def test_late_fusion_per_view_branches_get_their_own_view_in_order():
    strategy, net = _build(_spec(), available=3, fusion="late", shared=False)
    assert len(net.backbones) == 3 and net.head.in_features == 3 * net.backbones[0].num_features
    seen = {}
    hooks = [_capture(bb, seen, i) for i, bb in enumerate(net.backbones)]
    views = _constant_views()
    out = net({"image": views[:, 0], "views": views})
    for h in hooks:
        h.remove()
    for i in range(3):
        (x,) = seen[i]
        assert x.shape == (2, 1, 16, 16) and torch.all(x == 10.0 * i), f"branch {i} got the wrong view"
    # the per-view embeddings are what the head reads, view 0 first
    emb = out["view_embeddings"]
    assert torch.allclose(out["embedding"], emb.flatten(1))
    ref = net.backbones[1].eval()(views[:, 1])
    net.eval()
    assert torch.allclose(net({"views": views})["view_embeddings"][:, 1], ref, atol=1e-5)
    # every branch is trained: the loss reaches each backbone
    net.train()
    net({"views": torch.randn(4, 3, 1, 16, 16)})["logits"].sum().backward()
    for bb in net.backbones:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())


def test_late_fusion_shared_backbone_keeps_views_apart():
    strategy, net = _build(_spec(), available=2, fusion="late", shared=True, pool="mean")
    net.eval()
    assert len(net.backbones) == 1 and net.head.in_features == net.backbones[0].num_features
    views = torch.randn(3, 2, 1, 16, 16)
    out = net({"views": views})
    # one batched pass, but each (sample, view) pair keeps its own embedding, in order
    bb = net.backbones[0]
    for k in range(2):
        assert torch.allclose(out["view_embeddings"][:, k], bb(views[:, k]), atol=1e-5)
    assert torch.allclose(out["embedding"], out["view_embeddings"].mean(1))
    # swapping the views changes the per-view order, not the mean: views really are separate inputs
    swapped = net({"views": views.flip(1)})
    assert torch.allclose(swapped["view_embeddings"], out["view_embeddings"].flip(1), atol=1e-5)


def test_channel_fusion_stacks_views_as_channels_in_order():
    spec = _spec(in_chans=2)
    strategy, net = _build(spec, available=3, fusion="channels")
    bb = net.backbones[0]
    assert bb.in_chans == 6 and net.head.in_features == bb.num_features
    seen = {}
    h = _capture(bb, seen, "x")
    views = _constant_views(v=3, c=2)
    net({"views": views})
    h.remove()
    (x,) = seen["x"]
    assert x.shape == (2, 6, 16, 16)
    # channel index = view · C + channel: values 0, 1, 10, 11, 20, 21
    assert x[:, :, 0, 0].tolist() == [[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]] * 2
    # n_views keeps the first views only (view 0 = the image)
    strategy, net = _build(spec, available=3, fusion="channels", n_views=2)
    assert net.backbones[0].in_chans == 4 and net.n_views == 2


def test_backbones_are_built_in_the_order_of_earlier_versions():
    """The random stream a seed gives: the run's backbone first (channel fusion: then the V·C
    one, the view count being known from the data only), per-view branches after it, the head
    last. Same weights as building them by hand in that order."""
    spec = _spec(in_chans=2)

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 2, "spatial_dims": 2, "img_size": 16, **overrides})

    for options, order in [({"fusion": "channels"}, [{}, {"in_chans": 6}]),
                           ({"fusion": "late", "shared": False}, [{}, {}, {}]),
                           ({"fusion": "late", "shared": True}, [{}])]:
        torch.manual_seed(0)
        _, net = _build(spec, available=3, **options)
        torch.manual_seed(0)
        expected = [make(**overrides) for overrides in order]
        kept = expected[-1:] if options["fusion"] == "channels" else expected
        head = torch.nn.Linear(net.head.in_features, net.head.out_features)
        for built, reference in zip(net.backbones, kept, strict=True):
            for a, b in zip(built.state_dict().values(), reference.state_dict().values(), strict=True):
                assert torch.equal(a, b), options
        assert torch.equal(net.head.weight, head.weight), options


def test_volume_becomes_centre_slices_in_order_for_a_2d_backbone():
    assert centre_slices(28, 3) == [13, 14, 15] and centre_slices(7, 3) == [2, 3, 4]
    assert centre_slices(8, 4) == [2, 3, 4, 5] and centre_slices(5, 1) == [2]
    assert slab_bounds(8, 2) == [(0, 4), (4, 8)] and slab_bounds(28, 3) == [(0, 9), (9, 19), (19, 28)]
    # (B, 1, D, H, W) volumes whose value is the index along one axis
    ar = torch.arange(8.0)
    for axis in (0, 1, 2):
        shape = [1, 1, 1]
        shape[axis] = 8
        vol = ar.view(shape).expand(8, 8, 8)[None, None].expand(2, 1, 8, 8, 8)
        v = volume_to_views(vol, axis=axis, slices=3)
        assert v.shape == (2, 3, 1, 8, 8)
        assert v.flatten(2).amin(-1)[0].tolist() == [3.0, 4.0, 5.0] == v.flatten(2).amax(-1)[0].tolist(), axis
    vol = ar.view(8, 1, 1).expand(8, 8, 8)[None, None]
    slabs = volume_to_views(vol, axis=0, n_slabs=2)
    assert slabs.flatten(2).amin(-1)[0].tolist() == [1.5, 5.5]  # means of slices 0..3 and 4..7
    # the network: 2D backbone with `slices` input channels reading slices 13, 14, 15 in order
    spec = _spec("adrenalmnist3d", provides=(), dims=3, size=28)
    strategy = create_strategy("multiview", fusion="channels", slices=3)
    assert strategy.backbone_kwargs(spec) == {"spatial_dims": 2, "in_chans": 3}
    assert create_strategy("multiview", fusion="late").backbone_kwargs(spec) == {"spatial_dims": 2}
    strategy, net = _build(spec, fusion="channels", slices=3)
    bb = net.backbones[0]
    assert bb.spatial_dims == 2 and bb.in_chans == 3
    seen = {}
    h = _capture(bb, seen, "x")
    vol = torch.arange(28.0)[:, None, None].expand(28, 28, 28)[None, None].expand(2, 1, 28, 28, 28)
    out = net({"image": vol})
    h.remove()
    assert seen["x"][0].shape == (2, 3, 28, 28) and seen["x"][0][0, :, 0, 0].tolist() == [13.0, 14.0, 15.0]
    assert out["logits"].shape == (2, 2)
    assert strategy.metadata()["views"]["slices"] == [13, 14, 15]


def test_incompatibility_names_the_reason():
    breast = _spec("breastmnist", provides=())
    reason = create_strategy("multiview").incompatibility(breast)
    assert reason and "breastmnist" in reason and "views" in reason and "3D volume" in reason
    assert create_strategy("multiview").incompatibility(_spec()) is None  # probe: views
    adrenal = _spec("adrenalmnist3d", provides=(), dims=3, size=28)
    assert create_strategy("multiview").incompatibility(adrenal) is None
    reason = create_strategy("multiview", source="views").incompatibility(adrenal)
    assert reason and "source=views" in reason and "adrenalmnist3d" in reason
    assert "source=volume" in create_strategy("multiview", source="volume").incompatibility(_spec())
    with pytest.raises(ValueError, match="fusion"):
        create_strategy("multiview", fusion="early")
    for bad in ({"axis": 3}, {"n_slabs": 0}, {"slices": 0}, {"n_views": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_strategy("multiview", **bad)


def test_tiny_run_on_probe_views(tiny_run):
    metrics, run_dir = tiny_run("strategy=multiview", "strategy.options.fusion=channels")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run_dir / name).exists(), name
    assert 0 <= metrics["test/auroc"] <= 1
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["strategy"]["views"] == {"source": "views", "n_views": 2, "fusion": "channels"}
    # the run's network reads two views as two channels: its stem has 2 input channels
    one_channel = sum(p.numel() for p in create_backbone("tinycnn", in_chans=1, img_size=64).parameters())
    two_channel = sum(p.numel() for p in create_backbone("tinycnn", in_chans=2, img_size=64).parameters())
    assert meta["params"] - 2 * 96 - 2 == two_channel != one_channel


# --- detection (issue 18): the second view as global context of the detector -----------------
def _detector(**options):
    from dkbench.data.detection import pad_boxes
    from dkbench.runner.compose import compose_config

    strategy = create_strategy("multiview", **options)
    spec = DatasetSpec(name="toy_det", task="detection", num_classes=1, in_chans=1, spatial_dims=2, size=32,
                       provides=VIEWS)
    label = pad_boxes([np.array([[4, 4, 14, 12]]), np.zeros((0, 4)), np.array([[16, 10, 28, 24]])])
    rng = np.random.default_rng(0)
    split = SplitArrays(image=rng.integers(0, 255, (3, 1, 32, 32), dtype=np.uint8), label=label,
                        ids=np.array(["a", "b", "c"]),
                        extras={"views": rng.integers(0, 255, (3, 2, 1, 32, 32), dtype=np.uint8)})
    arrays = DatasetArrays(spec=spec, splits={"train": split, "val": split, "test": split})

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": 32, **overrides})

    config = {"model": dict(compose_config(["dataset=probe_det"]).model)}
    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, config=config))
    batch = {"image": torch.randn(3, 1, 32, 32), "views": torch.randn(3, 2, 1, 32, 32),
             "label": torch.as_tensor(label)}
    batch["views"][:, 0] = batch["image"]
    return strategy, spec, net, batch


def test_a_detector_reads_the_second_view_as_context_of_every_level():
    from dkbench.models.detector import DetectorNet
    from dkbench.strategies.catalogue.multiview import SecondViewContext

    strategy, spec, net, batch = _detector()
    assert isinstance(net, DetectorNet) and isinstance(net.level_context, SecondViewContext)
    assert strategy.metadata()["views"]["n_views"] == 2
    net.train()
    other_view = {**batch, "views": batch["views"].clone()}
    other_view["views"][:, 1] = torch.randn(3, 1, 32, 32)
    # zero-initialised: untrained, it is the plain detector, whatever the second view shows
    torch.testing.assert_close(net(batch)["cls_logits"], net(other_view)["cls_logits"])
    # but the loss already pulls the projection, so the context can grow
    cls_loss, box_loss = net.per_image_loss(net(batch), batch["label"])
    (cls_loss + box_loss).sum().backward()
    assert net.level_context.project.weight.grad.abs().sum() > 0
    # once it has grown, the second view changes the scores of view 0's anchors (and only view 1 is read)
    with torch.no_grad():
        net.level_context.project.weight.normal_()
    assert not torch.allclose(net(batch)["cls_logits"], net(other_view)["cls_logits"])
    same_view1 = {**batch, "views": batch["views"].clone()}
    same_view1["views"][:, 0] = torch.randn(3, 1, 32, 32)  # view 0 is the image, read as such, not as context
    torch.testing.assert_close(net(batch)["cls_logits"], net(same_view1)["cls_logits"])


def test_detection_refuses_fusions_that_need_registered_views_and_datasets_without_views():
    _, spec, _, _ = _detector()
    reason = create_strategy("multiview", fusion="channels").incompatibility(spec)
    assert reason and "fusion=late" in reason
    assert "shared=true" in create_strategy("multiview", shared=False).incompatibility(spec)
    no_views = DatasetSpec(name="busi_det", task="detection", num_classes=1, in_chans=1, spatial_dims=2, size=32,
                           provides=frozenset({"mask"}))
    assert "views" in create_strategy("multiview").incompatibility(no_views)
