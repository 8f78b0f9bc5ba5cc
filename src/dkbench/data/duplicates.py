"""Near-duplicate detection for medical image datasets without patient ids.

Public datasets such as BUSI and Kvasir-SEG hold the same frame more than once (exported twice,
once with and once without caliper marks or text, sometimes with a slightly different crop) and
consecutive frames of one examination. A random split then puts near-copies of test images into
training. This module scores every pair of images and groups the pairs above a threshold, so a
split can assign whole groups (``scripts/make_splits.py``).

Score
-----
``shifted_correlation``: the maximum Pearson correlation between the central window of one
thumbnail and the windows of the other shifted by up to ``max_shift`` thumbnail pixels, after

1. grey conversion (channel mean),
2. a 5×5 median filter at full resolution, which removes thin burned-in marks (calipers, dotted
   measurement lines, text strokes of 1–2 px at 128 px) that otherwise lower the correlation of
   the same frame exported with and without them, and
3. area-mean downsampling to 32×32 (smooths speckle and JPEG noise).

The shift search (±2 thumbnail px = ±8 px at 128) tolerates re-crops and probe movement between
consecutive frames. This is normalised cross-correlation template matching (Lewis, "Fast
normalized cross-correlation", Vision Interface 1995) on median-filtered thumbnails; the median
filter is the classical remedy for impulse-like overlays (Huang, Yang & Tang, IEEE TASSP 27(1),
1979).

Threshold
---------
``mirror_null`` gives a null distribution from the data itself: every image scored against every
other image's left-right mirror. A mirror keeps the modality's layout (skin line at the top,
shadowing below, the endoscope's octagonal mask) but cannot be the same frame, so its scores show
how high unrelated images of the same kind reach. Pairs whose own (unmirrored) score is above
``NULL_EXCLUDE`` are left out of the null: a near-duplicate of a roughly symmetric image also
matches its partner's mirror. ``THRESHOLD`` = 0.95 was set on BUSI and checked on Kvasir-SEG
(measured by ``scripts/make_splits.py`` and stored in each split file's ``detector`` field):

* BUSI: null maximum 0.936 (99.99th percentile 0.924) over ~300k mirrored pairs; the weakest of
  the four same-frame pairs confirmed by eye (different caliper marks) scores 0.984; the highest
  pair found by eye to be a false match (``normal (105)`` / ``malignant (6)``) 0.944. The threshold
  is 0.014 above the null maximum and 0.034 below the weakest confirmed pair.
* Kvasir-SEG: null maximum 0.936; the highest false match seen by eye (two different polyps
  under the same overlay text) 0.947.

Same-patient frames of one lesion form a continuum down into the null (by eye, true same-lesion
frames exist at 0.93–0.95), so the threshold errs towards the null side only as far as the
measured false matches allow; it was never tuned on a model's results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THUMB = 32  # thumbnail side (area-mean downsampling)
MEDIAN = 5  # median filter size at full resolution
MAX_SHIFT = 2  # in thumbnail pixels (×4 at 128 px)
THRESHOLD = 0.95  # see the module docstring for how it was chosen
NULL_EXCLUDE = 0.90  # pairs scoring above this unmirrored are candidate duplicates: not null


def thumbnails(images: np.ndarray, size: int = THUMB, median: int = MEDIAN) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images → (N, size, size) float32 grey thumbnails.

    Median-filtered at full resolution (``median`` ≤ 1 skips it), then area-mean downsampled;
    H and W must be multiples of ``size``."""
    from scipy.ndimage import median_filter

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    if x.ndim != 3:
        raise ValueError(f"thumbnails expects (N, H, W) or (N, H, W, C) images, got shape {x.shape}")
    n, h, w = x.shape
    if h % size or w % size:
        raise ValueError(f"image size {h}×{w} is not a multiple of the thumbnail size {size}")
    if median > 1:
        x = median_filter(x, size=(1, median, median), mode="nearest")
    return x.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so a dot product is a Pearson correlation."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def shifted_correlation(a: np.ndarray, b: np.ndarray | None = None, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """(N, M) score matrix of thumbnails ``a`` (N, k, k) against ``b`` (M, k, k) (default: ``a``).

    Score = max over shifts (dy, dx) in [-max_shift, max_shift]² of the Pearson correlation of a's
    central (k − 2·max_shift)² window with b's window moved by (dy, dx). With ``b`` omitted the
    matrix is made symmetric by the larger of the two directions (the diagonal is 1)."""
    a = np.asarray(a, dtype=np.float32)
    bb = a if b is None else np.asarray(b, dtype=np.float32)
    k, s = a.shape[1], max_shift
    if not 0 <= s < k // 2:
        raise ValueError(f"max_shift must be in [0, {k // 2}) for {k}×{k} thumbnails, got {s}")
    inner = k - 2 * s
    centre = _unit_rows(a[:, s : s + inner, s : s + inner].reshape(len(a), -1))
    best = np.full((len(a), len(bb)), -1.0, dtype=np.float32)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            win = _unit_rows(bb[:, s + dy : s + dy + inner, s + dx : s + dx + inner].reshape(len(bb), -1))
            np.maximum(best, centre @ win.T, out=best)
    if b is None:
        best = np.maximum(best, best.T)
    return best


def scores(images: np.ndarray, **kw) -> np.ndarray:
    """Symmetric (N, N) near-duplicate score matrix of raw images (see the module docstring)."""
    thumb_kw = {k: kw.pop(k) for k in ("size", "median") if k in kw}
    return shifted_correlation(thumbnails(images, **thumb_kw), **kw)


def pairs_above(score: np.ndarray, threshold: float = THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs (i < j) with score > threshold, in row-major order."""
    i, j = np.nonzero(np.triu(score > threshold, k=1))
    return list(zip(i.tolist(), j.tolist()))


def mirror_null(thumbs: np.ndarray, score: np.ndarray, max_shift: int = MAX_SHIFT,
                exclude_above: float = NULL_EXCLUDE) -> np.ndarray:
    """Null scores: each pair (i < j) scored as image i against the left-right mirror of image j
    (both directions, the larger kept), for the pairs whose unmirrored ``score`` ≤ ``exclude_above``."""
    mirrored = shifted_correlation(thumbs, thumbs[:, :, ::-1], max_shift=max_shift)
    mirrored = np.maximum(mirrored, mirrored.T)
    iu = np.triu_indices(len(thumbs), k=1)
    keep = score[iu] <= exclude_above
    return mirrored[iu][keep]


def union_find_groups(n: int, pairs) -> list[list[int]]:
    """Connected components of the pair graph over 0..n-1, each sorted, ordered by first member."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for a in range(n):
        comps.setdefault(find(a), []).append(a)
    return sorted(comps.values(), key=lambda g: g[0])


def cross_label_groups(groups: list[list[int]], labels: np.ndarray) -> list[list[int]]:
    """The groups whose members carry more than one label (the same frame labelled twice)."""
    labels = np.asarray(labels)
    return [g for g in groups if len(g) > 1 and len(np.unique(labels[g])) > 1]


@dataclass
class Calibration:
    """What a split file records about the detector on one dataset."""

    threshold: float
    n_pairs: int  # all unordered pairs
    n_null: int  # mirrored pairs in the null
    null_max: float
    null_q9999: float
    n_above: int  # real pairs above the threshold
    known: dict[str, float]  # "a / b" → score of each pair named as a duplicate

    def as_dict(self) -> dict:
        return {
            "score": (f"max Pearson r over shifts of up to ±{MAX_SHIFT} thumbnail px of {THUMB}×{THUMB} "
                      f"area-mean thumbnails of {MEDIAN}×{MEDIAN} median-filtered grey images "
                      "(dkbench.data.duplicates)"),
            "threshold": self.threshold,
            "null": "each image against every other image's left-right mirror, pairs with score "
                    f"> {NULL_EXCLUDE} left out",
            "null_pairs": self.n_null,
            "null_max": round(self.null_max, 4),
            "null_q99.99": round(self.null_q9999, 4),
            "margin_above_null_max": round(self.threshold - self.null_max, 4),
            "pairs_scored": self.n_pairs,
            "pairs_above_threshold": self.n_above,
            "known_pairs": {k: round(v, 4) for k, v in self.known.items()},
        }


def calibrate(images: np.ndarray, known: list[tuple[int, int, str]] = (), threshold: float = THRESHOLD
              ) -> tuple[np.ndarray, Calibration]:
    """Score matrix of ``images`` and its calibration record; ``known`` lists (i, j, name) pairs
    already known to be duplicates, whose scores are recorded beside the null."""
    thumbs = thumbnails(images)
    score = shifted_correlation(thumbs)
    null = mirror_null(thumbs, score)
    iu = np.triu_indices(len(score), k=1)
    cal = Calibration(
        threshold=threshold, n_pairs=len(iu[0]), n_null=len(null),
        null_max=float(null.max()) if len(null) else float("nan"),
        null_q9999=float(np.quantile(null, 0.9999)) if len(null) else float("nan"),
        n_above=int((score[iu] > threshold).sum()),
        known={name: float(score[i, j]) for i, j, name in known},
    )
    return score, cal
