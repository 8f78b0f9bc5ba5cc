"""The synthetic knowledge probe: determinism, the shortcut's exact rates, masks, the signal
knob, views, difficulty and reports (src/dkbench/data/readers/probe.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.measure import regionprops

from dkbench.data.readers.probe import (
    ATTRIBUTE_NAMES,
    generate_split,
    marker_present,
    parse_report,
    read_probe,
    report_variants,
    resolve_options,
)
from dkbench.data.registry import DATASETS
from dkbench.data.spec import DatasetSpec

SHORTCUT = {"enabled": True, "train_rate": 0.9, "test_rate": 0.5, "size": 4, "intensity": 255}


def _spec(normal: bool = False, size: int = 64) -> DatasetSpec:
    return DatasetSpec(
        name="probe", task="multiclass" if normal else "binary", num_classes=3 if normal else 2,
        in_chans=1, spatial_dims=2, size=size,
        provides=frozenset({"mask", "bbox", "attributes", "metadata", "text", "difficulty", "views"}),
    )


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def strong():
    """signal = 1: the lesion descriptors separate the classes."""
    return generate_split(600, split="test", options={"signal": 1.0, "shortcut": SHORTCUT})


@pytest.fixture(scope="module")
def null():
    """signal = 0: the lesion says nothing about the label."""
    return generate_split(600, split="test", options={"signal": 0.0})


@pytest.fixture(scope="module")
def probe():
    return read_probe(Path("/nonexistent"), _spec(), n_train=1000, n_val=200, n_test=400,
                      shortcut=SHORTCUT)


@pytest.fixture(scope="module")
def three():
    return generate_split(300, options={"normal_class": True, "shortcut": SHORTCUT})


def test_registered_and_contract_shapes(probe):
    assert DATASETS.get("probe") is read_probe
    assert set(probe.splits) == {"train", "val", "test"}
    sp = probe.splits["train"]
    n = len(sp)
    assert sp.image.shape == (n, 1, 64, 64) and sp.image.dtype == np.uint8
    assert sp.label.dtype == np.int64 and set(np.unique(sp.label)) == {0, 1}
    assert np.bincount(sp.label).tolist() == [n // 2, n // 2]  # balanced
    assert sp.ids[12] == "probe-train-00012" and len(set(sp.ids)) == n
    ex = sp.extras
    assert ex["mask"].shape == (n, 1, 64, 64) and ex["mask"].dtype == np.uint8
    assert set(np.unique(ex["mask"])) <= {0, 1}
    assert ex["bbox"].shape == (n, 4) and ex["bbox"].dtype == np.float32
    assert ex["attributes"].shape == (n, 4) and ex["attributes"].dtype == np.int64
    assert ex["metadata"].shape == (n, 2) and ex["metadata"].dtype == np.float32
    assert ex["text"].shape == (n,) and ex["text"].dtype.kind == "U"
    assert ex["difficulty"].shape == (n,) and ex["difficulty"].dtype == np.float32
    assert ex["views"].shape == (n, 2, 1, 64, 64) and ex["views"].dtype == np.uint8
    assert probe.notes["attribute_names"] == ATTRIBUTE_NAMES == ["shape", "orientation", "margin", "echo"]
    assert set(probe.notes["attribute_values"]) == set(ATTRIBUTE_NAMES)
    assert probe.notes["metadata_names"] == ["age", "lesion_palpable"]
    assert len(probe.checksum) == 64


def test_deterministic_by_seed():
    a = generate_split(40, options={"seed": 3, "shortcut": SHORTCUT})
    b = generate_split(40, options={"seed": 3, "shortcut": SHORTCUT})
    c = generate_split(40, options={"seed": 4, "shortcut": SHORTCUT})
    for key in ("image", "label"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key, arr in a.extras.items():
        np.testing.assert_array_equal(arr, b.extras[key])
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.extras["views"], c.extras["views"])


def test_checksum_follows_options():
    s = _spec()
    small = {"n_train": 4, "n_val": 4, "n_test": 4}
    assert read_probe(None, s, **small).checksum == read_probe(None, s, seed=0, **small).checksum
    assert read_probe(None, s, **small).checksum != read_probe(None, s, seed=1, **small).checksum


def test_shortcut_rates_are_exact(probe):
    for split, target, tol in (("train", 0.9, 0.02), ("val", 0.9, 0.02), ("test", 0.5, 0.05)):
        sp = probe.splits[split]
        present = marker_present(sp.image, {"shortcut": SHORTCUT})
        rate = np.mean(present == (sp.label == 1))
        assert abs(rate - target) <= tol, (split, rate)
        assert probe.notes["shortcut_agreement"][split] == pytest.approx(rate)
        # the marker is burnt into both views and is the only thing enabling it changes
        in_view1 = marker_present(sp.extras["views"][:, 1], {"shortcut": SHORTCUT})
        np.testing.assert_array_equal(in_view1, present)
    plain = generate_split(50, options={"shortcut": {**SHORTCUT, "enabled": False}})
    marked = generate_split(50, options={"shortcut": SHORTCUT})
    corner = np.zeros((64, 64), bool)
    corner[:4, :4] = True
    np.testing.assert_array_equal(plain.image[:, 0, ~corner], marked.image[:, 0, ~corner])


def test_marker_outside_masks(probe):
    for sp in probe.splits.values():
        present = marker_present(sp.image, {"shortcut": SHORTCUT})
        assert present.any()
        assert sp.extras["mask"][:, 0, :4, :4].sum() == 0
        # masks keep marker size + 3 px away from the borders
        assert sp.extras["mask"][:, 0, :7].sum() == 0 and sp.extras["mask"][:, 0, :, :7].sum() == 0
        assert np.nanmin(sp.extras["bbox"][:, :2]) >= 7 and np.nanmax(sp.extras["bbox"][:, 2:]) <= 64 - 7


def test_masks_match_lesions(probe):
    sp = probe.splits["train"]
    mask = sp.extras["mask"][:, 0].astype(bool)
    img = sp.image[:, 0].astype(np.float64)
    area = mask.sum(axis=(1, 2))
    assert (area > 0).all()
    inside = (img * mask).sum(axis=(1, 2)) / area
    outside = (img * ~mask).sum(axis=(1, 2)) / (~mask).sum(axis=(1, 2))
    assert (inside < outside).mean() > 0.97 and (outside - inside).mean() > 20
    ys, xs = np.nonzero(mask[0])
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    expected = np.stack([cols.argmax(1), rows.argmax(1),
                         64 - cols[:, ::-1].argmax(1), 64 - rows[:, ::-1].argmax(1)], 1)
    np.testing.assert_array_equal(sp.extras["bbox"], expected.astype(np.float32))
    assert sp.extras["bbox"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_normal_class(three):
    label, ex = three.label, three.extras
    assert np.bincount(label).tolist() == [100, 100, 100]
    normal = label == 0
    area = ex["mask"].sum(axis=(1, 2, 3))
    assert (area[normal] == 0).all() and (area[~normal] > 0).all()
    assert np.isnan(ex["bbox"][normal]).all() and not np.isnan(ex["bbox"][~normal]).any()
    assert (ex["attributes"][normal] == -1).all() and (ex["attributes"][~normal] >= 0).all()
    assert all(parse_report(t) == [-1] * 4 for t in ex["text"][normal])
    present = marker_present(three.image, {"shortcut": SHORTCUT})
    assert np.mean(present == (label == 2)) == pytest.approx(0.9, abs=0.02)


def test_spec_mismatch_names_the_option():
    with pytest.raises(ValueError, match="normal_class"):
        read_probe(None, _spec(normal=False), normal_class=True, n_train=2, n_val=2, n_test=2)
    with pytest.raises(ValueError, match="normal_class"):
        read_probe(None, _spec(normal=True), n_train=2, n_val=2, n_test=2)
    with pytest.raises(ValueError, match="unknown option"):
        read_probe(None, _spec(), nosuch=1)


def _shape_features(sp):
    bbox = sp.extras["bbox"]
    aspect = (bbox[:, 3] - bbox[:, 1]) / (bbox[:, 2] - bbox[:, 0])
    solidity = np.array([regionprops(m.astype(np.uint8))[0].solidity for m in sp.extras["mask"][:, 0]])
    return aspect, solidity


def test_signal_one_separates_shapes(strong):
    mal = strong.label == 1
    aspect, solidity = _shape_features(strong)
    assert aspect[mal].mean() > 1 > aspect[~mal].mean()  # taller-than-wide vs wider-than-tall
    assert solidity[mal].mean() < solidity[~mal].mean() - 0.03  # less convex
    assert _auc(aspect, mal) > 0.9 and _auc(-solidity, mal) > 0.9
    # attributes follow the label at signal 1 (derived from the drawn parameters, not the label)
    agree = (strong.extras["attributes"] == mal[:, None]).mean(axis=0)
    assert (agree > 0.9).all() and (agree < 1).all()


def test_signal_zero_hides_the_label(null):
    mal = null.label == 1
    aspect, solidity = _shape_features(null)
    assert abs(_auc(aspect, mal) - 0.5) < 0.1 and abs(_auc(-solidity, mal) - 0.5) < 0.1
    agree = (null.extras["attributes"] == mal[:, None]).mean(axis=0)
    assert (abs(agree - 0.5) < 0.1).all()
    assert _auc(null.extras["metadata"][:, 0], mal) > 0.6  # age stays weakly informative


def test_views(strong):
    views = strong.extras["views"]
    np.testing.assert_array_equal(views[:, 0], strong.image)
    assert not np.array_equal(views[:, 1], views[:, 0])
    # the second view shows the same lesion: darker where it is, so similar grey statistics
    assert abs(views[:, 1].mean() - views[:, 0].mean()) < 5


def test_difficulty(strong, three):
    d, area = strong.extras["difficulty"], strong.extras["mask"].sum(axis=(1, 2, 3))
    assert d.min() >= 0 and d.max() <= 1
    assert np.corrcoef(d, area)[0, 1] < -0.5
    assert (three.extras["difficulty"][three.label == 0] == 0.5).all()


def test_text_comes_from_attributes(strong, null):
    for sp in (strong, null):
        for text, attrs in zip(sp.extras["text"], sp.extras["attributes"]):
            assert text in report_variants(attrs)
            assert parse_report(text) == attrs.tolist()
    # same attributes → the same pool of phrases, whatever the label
    attrs, mal = null.extras["attributes"], null.label == 1
    for code in {tuple(a) for a in attrs}:
        sel = (attrs == code).all(axis=1)
        if (sel & mal).sum() >= 5 and (sel & ~mal).sum() >= 5:
            pool = report_variants(code)
            assert set(null.extras["text"][sel & mal]) <= pool >= set(null.extras["text"][sel & ~mal])


def test_other_sizes():
    sp = generate_split(20, size=128, options={"shortcut": SHORTCUT})
    assert sp.image.shape == (20, 1, 128, 128) and sp.extras["views"].shape == (20, 2, 1, 128, 128)
    assert (sp.extras["mask"].sum(axis=(1, 2, 3)) > 0).all()


def test_radius_option_scales_lesions_and_keeps_the_default_images():
    """`radius` (issue 10 calibration): the default range regenerates the original images; a
    larger range gives larger masks, with difficulty's size term relative to the range."""
    base = generate_split(64, options={"seed": 5})
    same = generate_split(64, options={"seed": 5, "radius": [4, 12]})
    np.testing.assert_array_equal(base.image, same.image)
    big = generate_split(64, options={"seed": 5, "radius": [8, 16]})
    assert big.extras["mask"].sum() > 1.5 * base.extras["mask"].sum()
    assert 0.0 <= big.extras["difficulty"].min() and big.extras["difficulty"].max() <= 1.0
    for bad in ([12, 4], [0.5, 4], [4, 30], [4]):
        with pytest.raises(ValueError, match="radius"):
            resolve_options({"radius": bad})
