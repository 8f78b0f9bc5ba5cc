"""attribute_multitask (HSCNN): attribute heads learn their attributes (and only through the
attribute loss), -1 values are ignored, the diagnosis head is fed the attribute predictions,
and BUSI's mask-derived attributes follow their documented definitions (SURVEY.md family E)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.data.readers.busi import derive_attributes, mask_descriptors
from dkbench.data.readers.probe import ATTRIBUTE_NAMES, generate_split, resolve_options
from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, IncompatibleStrategyError, StepContext, create_strategy
from dkbench.strategies.catalogue.attribute_multitask import attribute_loss
from tests.conftest import require_file

SIZE = 32  # the probe's smallest size: keeps the training test fast on a busy machine


def _spec(name: str, *overrides: str):
    return spec_from_config(compose_config([f"dataset={name}", *overrides]).dataset)


def _built(strategy, arrays, size=SIZE):
    """`strategy.build_net` on the data with a small tinycnn (seeded): the network it returns."""
    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": size,
                                             "widths": (8, 16, 32, 32), **overrides})

    torch.manual_seed(0)
    return strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=None, seed=0))


@pytest.fixture(scope="module")
def probe():
    """128 probe lesions at 32 px, signal 0: the attributes say nothing about the label, so
    only the attribute loss can teach the attribute heads."""
    spec = _spec("probe", f"dataset.size={SIZE}")
    split = generate_split(128, size=SIZE, split="train", options=resolve_options({"signal": 0.0}))
    arrays = DatasetArrays(spec=spec, splits={"train": split, "val": split, "test": split},
                           notes={"attribute_names": list(ATTRIBUTE_NAMES)})
    batch = InMemoryDataset(split, "binary", 0.5, 0.5).__getitems__(list(range(len(split))))
    return spec, arrays, batch


def _fit_attribute_accuracy(spec, arrays, batch, **options) -> tuple[float, float]:
    """Full-batch Adam on the strategy's loss; (mean attribute accuracy, mean majority rate)."""
    strategy = create_strategy("attribute_multitask", **options)
    net = _built(strategy, arrays)
    train = StepContext.for_stage("train", spec)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        out = net(batch)
        terms = strategy.loss_terms(train.task_loss(out["logits"], batch["label"]), out, batch, train)
        opt.zero_grad()
        torch.stack(list(terms.values())).sum().backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = strategy.extra_metrics(net(batch), batch, StepContext.for_stage("val", spec))
    assert set(acc) == {f"attr_acc_{n}" for n in ATTRIBUTE_NAMES} | {"attr_acc_mean"}
    return acc["attr_acc_mean"].item(), float(np.mean(list(strategy.majority_rate.values())))


def test_attribute_heads_learn_only_through_the_attribute_loss(probe):
    acc, majority = _fit_attribute_accuracy(*probe, weight=1.0, feed_attributes=False)
    # the control: same training without the attribute term (heads get no gradient at all)
    acc0, _ = _fit_attribute_accuracy(*probe, weight=0.0, feed_attributes=False)
    assert 0.45 < majority < 0.6
    assert acc > majority + 0.3, (acc, majority)
    assert acc0 < majority + 0.15, (acc0, majority)


def test_missing_attributes_are_ignored():
    torch.manual_seed(0)
    logits = [torch.randn(4, 2, requires_grad=True), torch.randn(4, 3, requires_grad=True),
              torch.randn(4, 2, requires_grad=True)]
    attrs = torch.tensor([[0, 2, -1], [-1, 1, -1], [1, -1, -1], [1, 0, -1]])
    loss = attribute_loss(logits, attrs)
    # the third attribute is unknown for every sample: left out of the mean over attributes
    known0, known1 = attrs[:, 0] >= 0, attrs[:, 1] >= 0
    expected = (F.cross_entropy(logits[0][known0], attrs[known0, 0])
                + F.cross_entropy(logits[1][known1], attrs[known1, 1])) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits[0].grad[1] == 0).all() and (logits[1].grad[2] == 0).all()  # -1 rows get no gradient
    assert logits[0].grad[0].abs().sum() > 0 and (logits[2].grad == 0).all()
    # a batch where nothing is known: an attribute term of exactly 0 that keeps the graph
    strategy = create_strategy("attribute_multitask")
    out = {"attr_logits": logits}
    train = StepContext.for_stage("train", _spec("probe"))
    term = strategy.loss_terms(torch.ones(4, requires_grad=True), out, {"attributes": torch.full((4, 3), -1)}, train)
    assert term["attributes"].item() == 0.0 and term["attributes"].requires_grad


def test_diagnosis_head_receives_attribute_predictions(probe):
    spec, arrays, batch = probe
    fed = _built(create_strategy("attribute_multitask", feed_attributes=True), arrays)
    plain = _built(create_strategy("attribute_multitask", feed_attributes=False), arrays)
    d = fed.backbone.num_features
    assert [h.out_features for h in fed.attr_heads] == [2, 2, 2, 2]  # values per attribute, from the data
    assert fed.head.in_features == d + 8 and plain.head.in_features == d
    x = {"image": batch["image"][:4]}
    for net, depends in ((fed, True), (plain, False)):
        net.eval()
        with torch.no_grad():
            before = net(x)["logits"].clone()
            net.attr_heads[0].bias[1] += 3.0  # the shape head now says "irregular" more
            after = net(x)["logits"]
        assert (not torch.allclose(before, after)) == depends


def test_number_of_attribute_values_comes_from_the_data(probe):
    spec, arrays, _ = probe
    split = arrays.splits["train"]
    attrs = split.extras["attributes"].copy()
    attrs[0, 1] = 2  # a third value of orientation
    three = SplitArrays(split.image, split.label, split.ids, {**split.extras, "attributes": attrs})
    arrays3 = DatasetArrays(spec=spec, splits={"train": three, "val": three, "test": three}, notes=arrays.notes)
    net = _built(create_strategy("attribute_multitask"), arrays3)
    assert [h.out_features for h in net.attr_heads] == [2, 3, 2, 2]


def test_refused_without_attributes():
    with pytest.raises(IncompatibleStrategyError, match=r"breastmnist.*missing: \['attributes'\]"):
        create_strategy("attribute_multitask").check_compatible(_spec("breastmnist"))
    assert create_strategy("attribute_multitask").incompatibility(_spec("busi_binary")) is None
    with pytest.raises(ValueError, match=r"option 'weight' must be >= 0"):
        create_strategy("attribute_multitask", weight=-1.0)


# ----------------------------------------------------------------------------- BUSI derived attributes
def _disc(cx, cy, r, size=128):
    yy, xx = np.mgrid[:size, :size]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def _ellipse(cx, cy, rx, ry, size=128):
    yy, xx = np.mgrid[:size, :size]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)


def _star(cx, cy, r_in, r_out, spikes=6, size=128):
    yy, xx = np.mgrid[:size, :size]
    phi = np.arctan2(yy - cy, xx - cx)
    radius = r_in + (r_out - r_in) * np.maximum(np.cos(spikes * phi), 0) ** 4
    return (np.hypot(xx - cx, yy - cy) <= radius).astype(np.uint8)


def test_busi_derived_attributes_follow_their_definitions():
    masks = np.stack([
        _disc(64, 64, 30),              # 0 large, regular, convex, wider == taller
        _ellipse(64, 64, 8, 20),        # 1 taller-than-wide
        _ellipse(64, 64, 20, 8),        # 2 wider-than-tall
        _star(64, 64, 10, 30),          # 3 spiculated: irregular, non-convex outline
        np.pad(np.ones((6, 6), np.uint8), ((10, 112), (10, 112))),  # 4 small square
        np.zeros((128, 128), np.uint8),  # 5 no lesion
    ])
    desc = mask_descriptors(masks)
    assert desc["aspect"][1] == pytest.approx(41 / 17) and desc["area"][4] == 36
    assert desc["solidity"][0] > 0.97 and desc["solidity"][3] < 0.8 and desc["convexity"][3] < 0.95
    assert np.isnan(desc["area"][5])
    train = np.array([True] * 5 + [False])
    attrs, thr = derive_attributes(desc, train)
    shape, orientation, margin, size = attrs.T
    assert thr["orientation_aspect"] == 1.0
    assert thr["size_area"] == np.median(desc["area"][:5])
    assert orientation.tolist()[:5] == [0, 1, 0, 0, 0]
    assert shape[3] == 1 and shape[0] == 0 and margin[3] == 1
    assert size[0] == 1 and size[4] == 0
    assert (attrs[5] == -1).all()  # no lesion: not applicable
    # thresholds come from the train rows only: a test-only lesion does not move them
    desc2 = {k: np.append(v, 10_000.0) for k, v in desc.items()}
    _, thr2 = derive_attributes(desc2, np.append(train, False))
    assert thr2 == thr


@pytest.mark.data
def test_busi_readers_provide_derived_attributes(data_dir):
    require_file(data_dir, "busi/busi_128.npz")
    three = load_dataset(compose_config(["dataset=busi"]).dataset, data_dir)
    binary = load_dataset(compose_config(["dataset=busi_binary"]).dataset, data_dir)
    assert "attributes" in three.spec.provides and "attributes" in binary.spec.provides
    assert binary.notes["attribute_names"] == ["shape", "orientation", "margin", "size"]
    assert binary.notes["attribute_thresholds"] == three.notes["attribute_thresholds"]
    assert any("DERIVED from the lesion masks" in w for w in binary.notes["warnings"])
    for s, split in three.splits.items():
        attrs = split.extras["attributes"]
        normal = split.label == 0
        assert (attrs[normal] == -1).all() and (attrs[~normal] >= 0).all()
        np.testing.assert_array_equal(binary.splits[s].extras["attributes"], attrs[~normal])


def test_tiny_run_logs_attribute_accuracies(tiny_run):
    metrics, run_dir = tiny_run("strategy=attribute_multitask")
    for name in [*ATTRIBUTE_NAMES, "mean"]:
        assert 0.0 <= metrics[f"test/attr_acc_{name}"] <= 1.0
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["attribute_names"] == ATTRIBUTE_NAMES and meta["attribute_classes"] == [2, 2, 2, 2]
    assert (run_dir / "predictions.csv").is_file() and (run_dir / "metrics.json").is_file()
