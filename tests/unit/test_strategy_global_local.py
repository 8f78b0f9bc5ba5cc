"""`global_local` (AG-CNN): the crop is the box of the largest high-attention region of the
global branch, centred on its hot spot and inside the image; the local branch reads exactly that
crop, zoomed to the input size; the fusion head takes both branches (2 × features) and both
branches get gradients; `crop_source: mask` uses the dataset's box (also at test time)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from dkbench.backbones import Backbone, create_backbone
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.geometry import components
from dkbench.geometry.boxes import clamp_box, crop_resize
from dkbench.geometry.components import component_labels
from dkbench.metrics.classification import per_sample_loss
from dkbench.strategies import BuildContext, StepContext, create_strategy
from dkbench.strategies.catalogue.global_local import attention_box, attention_map

SIZE = 32


def _spec(provides=(), name="probe", dims=2) -> DatasetSpec:
    return DatasetSpec(name=name, task="binary", num_classes=2, in_chans=1, spatial_dims=dims, size=SIZE,
                       provides=frozenset(provides))


def _centre(box: torch.Tensor) -> torch.Tensor:
    return (box[:, :2] + box[:, 2:]) / 2


class HotSpot(Backbone):
    """A 'global backbone' whose feature map has one hot cell at a known place (+ a learnable
    term, so it receives gradients)."""

    num_features = 8

    def __init__(self, cells: list[tuple[int, int]], grid: int = 8):
        super().__init__()
        self.cells, self.grid = cells, grid
        self.conv = torch.nn.Conv2d(1, self.num_features, 1)

    def forward_features(self, x):
        base = torch.zeros(x.shape[0], self.num_features, self.grid, self.grid)
        for i, (r, c) in enumerate(self.cells):
            base[i, :, r, c] = 5.0
        small = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), self.grid)
        return base + 0.01 * torch.tanh(small)


def test_crop_box_is_centred_on_the_feature_map_hot_spot():
    # hot cells of an 8×8 feature map on a 64 px image: cell (r, c) covers [8c, 8c+8) × [8r, 8r+8)
    cells = [(5, 2), (1, 6), (3, 3), (6, 1)]
    fmap = torch.rand(4, 16, 8, 8) * 0.2
    for i, (r, c) in enumerate(cells):
        fmap[i, 3, r, c] = -4.0  # |f|: a strongly negative activation is attention as well
    heat = attention_map(fmap, (64, 64))
    assert heat.shape == (4, 1, 64, 64) and heat.amin() >= 0 and heat.amax() <= 1
    box = attention_box(heat, 0.7)
    expected = torch.tensor([[8 * c + 4.0, 8 * r + 4.0] for r, c in cells])
    assert (_centre(box) - expected).abs().max() <= 1.0
    # the minimum-size floor grows the box around its centre (interior hot spots)
    grown = clamp_box(box, (64, 64), 0.25)
    assert (grown[:, 2:] - grown[:, :2] >= 16).all()
    assert (_centre(grown) - expected).abs().max() <= 1.0
    # ... and shifts it back inside the image near a border (the centre moves only then)
    edge = clamp_box(box, (64, 64), 0.5)
    assert (edge[:, :2] >= 0).all() and (edge[:, 2:] <= 64).all() and (edge[:, 2:] - edge[:, :2] == 32).all()


def test_largest_connected_region_wins_over_a_smaller_hot_spot():
    yy, xx = torch.meshgrid(torch.arange(SIZE * 2.0) + 0.5, torch.arange(SIZE * 2.0) + 0.5, indexing="ij")
    main = torch.exp(-((xx - 20) ** 2 + (yy - 40) ** 2) / (2 * 5.0**2))
    small = 0.95 * torch.exp(-((xx - 50) ** 2 + (yy - 10) ** 2) / (2 * 2.0**2))
    heat = (main + small)[None, None]
    assert ((heat > 0.7) & (xx > 40)).any()  # the small spot passes the threshold too
    keep, _ = components.largest_component(heat > 0.7)
    assert keep.any() and not (keep & (xx > 40)).any()
    box = attention_box(heat, 0.7)
    assert (_centre(box) - torch.tensor([[20.0, 40.0]])).abs().max() <= 1.0
    assert box[0, 2] < 30  # a box around all thresholded pixels would reach x = 53


def test_crop_boxes_stay_inside_the_image_and_crop_what_they_say():
    torch.manual_seed(0)
    fmap = torch.randn(32, 8, 4, 4)
    box = clamp_box(attention_box(attention_map(fmap, (SIZE, SIZE)), 0.7), (SIZE, SIZE), 0.25)
    assert (box[:, :2] >= 0).all() and (box[:, 2:] <= SIZE).all() and (box[:, 2:] > box[:, :2]).all()
    # crops of a coordinate ramp cover exactly the box (x ramp → x range, y ramp → y range)
    ramp = torch.arange(SIZE, dtype=torch.float32) + 0.5  # pixel centres
    img = torch.stack([ramp.expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE)])[None].expand(32, 2, SIZE, SIZE)
    crop = crop_resize(img, box)
    assert crop.shape == img.shape
    # first / last sample sits half a crop pixel inside the box (the ramp is clamped at the
    # image's outer pixel centres, 0.5 px from its edge)
    tol = (0.5 * (box[:, 2:] - box[:, :2]) / SIZE).clamp_min(0.5) + 1e-4
    for axis in (0, 1):
        lo = crop[:, axis].flatten(1).amin(1)
        hi = crop[:, axis].flatten(1).amax(1)
        assert (lo >= box[:, axis] - 1e-4).all() and (lo - box[:, axis] <= tol[:, axis]).all()
        assert (hi <= box[:, axis + 2] + 1e-4).all() and (box[:, axis + 2] - hi <= tol[:, axis]).all()


def _context(spec: DatasetSpec, make_backbone) -> BuildContext:
    split = SplitArrays(image=np.zeros((2, 1, SIZE, SIZE), np.uint8), label=np.zeros(2, np.int64),
                        ids=np.array(["a", "b"]))
    return BuildContext(arrays=DatasetArrays(spec, {"train": split, "val": split, "test": split}),
                        make_backbone=make_backbone)


def test_empty_attention_region_crops_the_whole_image():
    """Nothing above the threshold (a flat heat map): the box is the whole image, 2-D and 3-D."""
    assert attention_box(torch.zeros(2, 1, 16, 24), 0.7).tolist() == [[0.0, 0.0, 24.0, 16.0]] * 2
    assert attention_box(torch.zeros(1, 1, 4, 6, 8), 0.7).tolist() == [[0.0, 0.0, 0.0, 8.0, 6.0, 4.0]]


def test_options_are_typed_and_loss_weights_complete():
    assert create_strategy("global_local", loss_weights={"local": 0}).options.loss_weights == {
        "global": 1.0, "local": 0.0, "fusion": 1.0}
    for bad, match in [({"loss_weights": {"lcoal": 1.0}}, "loss_weights"), ({"tau": 1.0}, "tau"),
                       ({"crop_source": "box"}, "crop_source"), ({"min_crop": 2.0}, "min_crop")]:
        with pytest.raises(ValueError, match=match):
            create_strategy("global_local", **bad)


def _net(cells, **options):
    strategy = create_strategy("global_local", min_crop=0.0, **options)
    # the run's factory builds the global branch first, then the local one: here the fake
    # global branch, then a local tinycnn as wide as it
    local = create_backbone("tinycnn", in_chans=1, img_size=64, widths=(8, 8, 8, HotSpot.num_features))
    built = iter([HotSpot(cells), local])
    net = strategy.build_net(_context(_spec(("bbox", "mask")), lambda **overrides: next(built)))
    return strategy, net


def _step(stage: str) -> StepContext:
    return StepContext.for_stage(stage, _spec(("bbox", "mask")))


def test_local_branch_reads_the_attention_crop_and_fusion_uses_both_branches():
    cells = [(5, 2), (1, 6)]
    strategy, net = _net(cells)
    seen = {}
    handle = net.local_backbone.blocks.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    image = torch.randn(2, 1, 64, 64)
    out = net({"image": image})
    handle.remove()
    expected = torch.tensor([[8 * c + 4.0, 8 * r + 4.0] for r, c in cells])
    assert (_centre(out["crop_box"]) - expected).abs().max() <= 1.0
    # the local branch saw the crop of the hot region, zoomed to the input size — not the image
    assert seen["x"].shape == image.shape
    assert torch.allclose(seen["x"], crop_resize(image, out["crop_box"]))
    assert not torch.allclose(seen["x"], image, atol=0.1)
    # fusion: 2 × features in, logits = fusion logits; the three CE terms; both branches learn
    assert net.fusion_head.in_features == 2 * HotSpot.num_features
    assert out["embedding"].shape == (2, 2 * HotSpot.num_features)
    label = torch.tensor([0, 1])
    terms = strategy.loss_terms(per_sample_loss(out["logits"], label, "binary"), out, {"label": label}, _step("train"))
    assert set(terms) == {"fusion", "global", "local"}
    # the auxiliary terms are the run's task loss (step.task_loss) of each branch's own head
    torch.testing.assert_close(terms["local"], per_sample_loss(out["logits_local"], label, "binary").mean())
    doubled = StepContext.for_stage("train", _spec(), task_loss=lambda logits, y: 2 * per_sample_loss(logits, y, "binary"))
    aux = strategy.loss_terms(per_sample_loss(out["logits"], label, "binary"), out, {"label": label}, doubled)
    torch.testing.assert_close(aux["global"], 2 * terms["global"])
    torch.stack(list(terms.values())).sum().backward()
    for branch in (net.global_backbone, net.local_backbone):
        grads = [p.grad for p in branch.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # the fusion head's weights on each half get gradients: it reads both branches
    g = net.fusion_head.weight.grad
    f = HotSpot.num_features
    assert g[:, :f].abs().sum() > 0 and g[:, f:].abs().sum() > 0


def test_mask_mode_crops_the_dataset_box_at_train_and_test_time():
    strategy, net = _net([(1, 1), (1, 1), (1, 1)], crop_source="mask")
    bbox = torch.tensor([[30.0, 20.0, 50.0, 44.0], [4.0, 40.0, 20.0, 60.0], [math.nan] * 4])
    for train in (True, False):
        net.train(train)
        out = net({"image": torch.randn(3, 1, 64, 64), "bbox": bbox})
        assert torch.equal(out["crop_box"][:2], bbox[:2])
        # no box (no lesion): the attention box of the hot cell (1, 1) instead
        assert (_centre(out["crop_box"][2:]) - torch.tensor([[12.0, 12.0]])).abs().max() <= 1.0
    mask = torch.zeros(3, 1, 64, 64, dtype=torch.uint8)
    mask[0, 0, 10:20, 30:34] = 1  # rows 10-19, cols 30-33 → (x0, y0, x1, y1) = (30, 10, 34, 20)
    out = net({"image": torch.randn(3, 1, 64, 64), "mask": mask})
    assert out["crop_box"][0].tolist() == [30.0, 10.0, 34.0, 20.0]
    meta = strategy.metadata()
    assert "ground-truth" in meta["test_time_crop"]
    assert "ground-truth" not in create_strategy("global_local").metadata()["test_time_crop"]
    # compatibility: attention mode runs anywhere, mask mode needs a box or a mask
    breast = _spec(name="breastmnist")
    assert create_strategy("global_local").incompatibility(breast) is None
    reason = strategy.incompatibility(breast)
    assert "crop_source=mask" in reason and "bbox" in reason and "breastmnist" in reason
    assert strategy.incompatibility(_spec(("bbox",))) is None


def test_tiny_run_on_the_probe(tiny_run):
    metrics, run_dir = tiny_run("strategy=global_local")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run_dir / name).exists(), name
    assert 0 <= metrics["test/auroc"] <= 1
    # the crop is a real sub-window of the image and is measured against the lesion box
    assert 0.0625 - 1e-6 <= metrics["test/crop_area"] <= 1.0
    assert 0 <= metrics["test/crop_lesion_iou"] <= 1 and 0 <= metrics["test/crop_centre_in_lesion"] <= 1
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["strategy"]["strategy"] == "global_local" and "attention" in meta["strategy"]["test_time_crop"]
    assert meta["strategy"]["options"]["loss_weights"] == {"global": 1.0, "local": 1.0, "fusion": 1.0}
    # two backbones + three heads: more than one tinycnn
    one = sum(p.numel() for p in create_backbone("tinycnn", in_chans=1, img_size=64).parameters())
    assert meta["params"] > 2 * one


@contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail on any read of a tensor's value into Python (bool/float/int of a tensor, `.item()`,
    `.tolist()`, `torch.equal`): on a GPU each one waits for the device (a host sync). A CPU
    stand-in for `torch.cuda.set_sync_debug_mode("error")`; shared by the strategies' tests."""
    def refuse(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"host read of a tensor value ({name}) in a training-step code path")
        return fail

    with monkeypatch.context() as patch:
        for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
            patch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
        patch.setattr(torch, "equal", refuse("torch.equal"))
        yield


def _scipy_largest(mask: np.ndarray, full: bool = True) -> np.ndarray:
    from scipy import ndimage

    out = np.zeros_like(mask, bool)
    for i, m in enumerate(mask[:, 0]):
        lab, n = ndimage.label(m, structure=ndimage.generate_binary_structure(m.ndim, m.ndim if full else 1))
        if n:
            out[i, 0] = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return out


def _serpentine(size: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r in range(0, size, 2):
        m[r] = True
        if r + 1 < size:
            m[r + 1, size - 1 if (r // 2) % 2 == 0 else 0] = True
    return m


def _spiral(size: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    lo, hi = 0, size - 1
    while lo <= hi:
        m[lo, lo:hi + 1] = m[lo:hi + 1, hi] = m[hi, lo:hi + 1] = True
        m[lo + 2:hi + 1, lo] = True
        if lo + 2 <= hi:
            m[lo + 2, lo:lo + 3] = True
        lo, hi = lo + 2, hi - 2
    return m


@pytest.mark.parametrize("connectivity", ["full", "face"])
def test_device_component_search_equals_scipy(connectivity):
    """The batched search finds scipy's largest component (ties: the first in raster order) on
    random 2-D and 3-D masks and on long thin shapes (serpentine, spiral), in both modes; the
    sync-free budget converges on all of them."""
    gen = torch.Generator().manual_seed(0)
    cases = [torch.rand(16, 1, 28, 28, generator=gen) < p for p in (0.3, 0.5, 0.6)]
    cases.append(torch.rand(6, 1, 9, 10, 11, generator=gen) < 0.4)
    cases.append(torch.stack([_serpentine(64), _serpentine(64).flip(-1), _spiral(64), _spiral(64).T.contiguous()])[:, None])
    tie = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    tie[0, 0, 8:10, 1:3] = tie[0, 0, 1:3, 8:10] = True  # equal sizes: the one starting first wins
    cases += [tie, torch.zeros(2, 1, 8, 8, dtype=torch.bool)]
    for mask in cases:
        expected = _scipy_largest(mask.numpy(), connectivity == "full")
        for exact in (True, False):
            keep, converged = components.largest_component(mask, connectivity, exact=exact)
            assert converged.all()
            np.testing.assert_array_equal(keep.numpy(), expected)
    # a budget too small for a long shape is reported, not hidden
    _, converged = component_labels(_serpentine(64)[None, None], iterations=1, exact=False)
    assert not converged.any()


def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch):
    """Forward (attention → region → crop → local branch), loss and train metrics without one
    host read, in both crop sources; evaluation may iterate the region search to its end."""
    label = torch.tensor([0, 1, 1])
    bbox = torch.tensor([[30.0, 20.0, 50.0, 44.0], [4.0, 40.0, 20.0, 60.0], [math.nan] * 4])
    for source in ("attention", "mask"):
        strategy, net = _net([(5, 2), (1, 6), (3, 3)], crop_source=source)
        net.sync_free_search = True  # the accelerator path (the CPU default checks convergence)
        net.train()
        batch = {"image": torch.randn(3, 1, 64, 64), "label": label, "bbox": bbox}
        with no_host_reads(monkeypatch):
            out = net(batch)
            terms = strategy.loss_terms(per_sample_loss(out["logits"], label, "binary"), out, batch, _step("train"))
            torch.stack(list(terms.values())).sum().backward()
            metrics = strategy.extra_metrics(out, batch, _step("train"))
        assert set(metrics) == {"crop_area", "crop_search_converged"} and float(metrics["crop_search_converged"]) == 1
        net.eval()
        with torch.no_grad():
            evaluated = net(batch)
        torch.testing.assert_close(evaluated["crop_box"], out["crop_box"])  # same region either way
        assert {"crop_lesion_iou", "crop_centre_in_lesion"} <= set(strategy.extra_metrics(evaluated, batch, _step("val")))
