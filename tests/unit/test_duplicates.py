"""Near-duplicate detector (dkbench.data.duplicates) and the duplicate groups of the saved splits.

Synthetic tests run anywhere; tests marked `data` score the real BUSI / Kvasir-SEG files under
DKBENCH_DATA and skip when they are absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dkbench.data import duplicates as dup
from dkbench.data.saved_splits import load_split
from dkbench.data.spec import SPLITS
from tests.conftest import require_file

FILES = {"busi": "busi/busi_128.npz", "kvasir_seg": "kvasir_seg/kvasir_seg_128.npz"}
#: Same frame with different caliper marks, confirmed by eye (issue 10); the last crosses labels.
BUSI_CONFIRMED = [("benign (6)", "benign (323)"), ("benign (200)", "benign (274)"),
                  ("malignant (12)", "malignant (110)"), ("benign (164)", "malignant (52)")]
#: Two frames of one polyp that the old split put in val and train.
KVASIR_FOUND = ("cju1hhj6mxfp90835n3wofrap", "cju3x9lttikfb0818a0g104zn")


def fake_ultrasound(rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """Smooth tissue-like structure plus speckle, uint8, (size, size)."""
    tissue = gaussian_filter(rng.normal(size=(size, size)), 6)
    tissue = (tissue - tissue.min()) / (tissue.max() - tissue.min())
    speckle = rng.rayleigh(0.25, size=(size, size))
    return np.clip(255 * tissue * speckle / speckle.mean() * 0.6, 0, 255).astype(np.uint8)


def draw_calipers(img: np.ndarray, centres: list[tuple[int, int]]) -> np.ndarray:
    """Bright '+' caliper marks (1 px strokes, 7 px arms) joined by a dotted line, as on BUSI."""
    out = img.copy()
    for y, x in centres:
        out[y - 3 : y + 4, x] = 255
        out[y, x - 3 : x + 4] = 255
    (y0, x0), (y1, x1) = centres[0], centres[-1]
    for t in np.linspace(0, 1, 25):
        out[round(y0 + t * (y1 - y0)), round(x0 + t * (x1 - x0))] = 255
    return out


def test_shifted_copy_with_calipers_is_found_and_different_images_are_not():
    rng = np.random.default_rng(0)
    big = fake_ultrasound(rng)
    frame = big[16:144, 16:144]
    shifted = draw_calipers(big[21:149, 13:141], [(40, 30), (45, 100)])  # moved 5 px down, 3 px left
    other = fake_ultrasound(rng)[16:144, 16:144]
    score = dup.scores(np.stack([frame, shifted, other]))
    assert score[0, 1] > dup.THRESHOLD, f"shifted copy with calipers scores {score[0, 1]:.3f}"
    assert score[0, 2] < dup.THRESHOLD and score[1, 2] < dup.THRESHOLD, score
    assert dup.pairs_above(score) == [(0, 1)]
    assert dup.union_find_groups(3, dup.pairs_above(score)) == [[0, 1], [2]]
    # without the shift search the moved copy scores lower: the search is what catches it
    plain = dup.shifted_correlation(dup.thumbnails(np.stack([frame, shifted])), max_shift=0)
    assert plain[0, 1] < score[0, 1]


def test_median_filter_removes_caliper_marks():
    rng = np.random.default_rng(1)
    frame = fake_ultrasound(rng, 128)
    marked = draw_calipers(frame, [(30, 20), (30, 60), (90, 20), (90, 100)])
    filtered = dup.thumbnails(np.stack([frame, marked]))
    raw = dup.thumbnails(np.stack([frame, marked]), median=1)
    assert np.abs(filtered[0] - filtered[1]).max() < np.abs(raw[0] - raw[1]).max()


def test_many_random_images_form_no_group():
    rng = np.random.default_rng(2)
    images = np.stack([fake_ultrasound(rng, 128) for _ in range(30)])
    score = dup.scores(images)
    assert np.allclose(np.diag(score), 1, atol=1e-5) and np.allclose(score, score.T)
    assert dup.pairs_above(score) == []


def test_rgb_images_and_cross_label_groups():
    rng = np.random.default_rng(3)
    grey = fake_ultrasound(rng, 128)
    rgb = np.stack([grey] * 3, axis=-1)
    assert dup.thumbnails(rgb[None]).shape == (1, 32, 32)
    groups = [[0, 1], [2], [3, 4, 5]]
    assert dup.cross_label_groups(groups, np.array([1, 1, 0, 1, 2, 1])) == [[3, 4, 5]]
    with pytest.raises(ValueError, match="multiple"):
        dup.thumbnails(np.zeros((1, 100, 100)))


# ----------------------------------------------------------------------------- saved splits
def test_confirmed_busi_pairs_share_a_group():
    doc = load_split("busi")
    groups = [set(g) for g in doc["groups"] + doc["cross_label_groups"]]
    for a, b in BUSI_CONFIRMED:
        assert any({a, b} <= g for g in groups), f"{a} / {b} are not in one duplicate group"
    # the cross-label pair is label noise: excluded from every split
    assert {"benign (164)", "malignant (52)"} <= set(doc["excluded"])
    assert not ({"benign (164)", "malignant (52)"} & {i for s in SPLITS for i in doc[s]})
    kv = [set(g) for g in load_split("kvasir_seg")["groups"]]
    assert any(set(KVASIR_FOUND) <= g for g in kv)


@pytest.mark.parametrize("name", ["busi", "kvasir_seg"])
def test_split_file_documents_its_detector(name):
    det = load_split(name)["detector"]
    assert det["threshold"] == dup.THRESHOLD
    assert det["null_max"] < det["threshold"], "the threshold must sit above the mirrored-pair null"
    assert all(v > det["threshold"] for v in det["known_pairs"].values())


@pytest.mark.data
@pytest.mark.parametrize("name", ["busi", "kvasir_seg"])
def test_no_pair_across_splits_exceeds_the_threshold(name, data_dir):
    path = require_file(data_dir, FILES[name])
    with np.load(path) as z:
        images, ids = z["images"], z["ids"].astype(str)
    doc = load_split(name)
    where = {i: s for s in SPLITS for i in doc[s]}
    split = np.array([where.get(i, "excluded") for i in ids])
    score = dup.scores(images)
    for i, j in dup.pairs_above(score):
        assert split[i] == split[j], f"{ids[i]} ({split[i]}) / {ids[j]} ({split[j]}) score {score[i, j]:.3f}"
    for a, b in BUSI_CONFIRMED if name == "busi" else [KVASIR_FOUND]:
        i, j = np.flatnonzero(ids == a)[0], np.flatnonzero(ids == b)[0]
        assert score[i, j] > dup.THRESHOLD
