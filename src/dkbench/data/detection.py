"""Detection targets: 0..n boxes per image, stored padded so a split stays one array per key.

A detection dataset's `label` is a float32 array (N, K, 5) of *box rows* (x_lo, y_lo, x_hi,
y_hi, class): pixels of the image the run sees (after `dataset.resize`), x = column, y = row, hi
exclusive (the convention of `dkbench.geometry`), class = foreground class index 0..C-1. K is the
largest number of boxes of any image of the split; an image with fewer boxes has all-NaN rows
after its boxes, and an image without any lesion has only NaN rows: a *negative*, kept as such.

Why padded: the in-memory data module gathers a batch with one `index_select` per key (on the
accelerator when resident), which needs one rectangular array per key. `pad_boxes` is the
collate's inverse half (variable-length lists → padded array) and `unpad_boxes` the half the
detector needs (padded batch → one (n_i, 4) box tensor and (n_i,) label tensor per image), so
variable-length boxes survive batching without a custom collate over Python lists.

Boxes derived from masks (`boxes_from_masks`): one box per connected component (8-connected)
of the lesion mask, at the mask's resolution (`dkbench.geometry.components.component_boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dkbench.errors import InvalidDataError

#: columns of a box row
BOX_COLUMNS = ("x_lo", "y_lo", "x_hi", "y_hi", "class")


def pad_boxes(boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Per-image (n_i, 4) boxes (and (n_i,) class indices, default 0) → float32 (N, K, 5) box
    rows, NaN-padded to K = max n_i (K ≥ 1, so a split of negatives still has a box axis)."""
    k = max([len(b) for b in boxes] + [1])
    out = np.full((len(boxes), k, 5), np.nan, np.float32)
    for i, b in enumerate(boxes):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        out[i, : len(b), :4] = b
        out[i, : len(b), 4] = 0 if classes is None else np.asarray(classes[i]).reshape(-1)
    return out


def unpad_boxes(label: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(B, K, 5) padded box rows → per image (n_i, 4) float boxes and (n_i,) int64 classes
    (n_i = 0 for a negative image), on the label's device."""
    if label.ndim != 3 or label.shape[-1] != 5:
        raise ValueError(f"detection labels must be (B, K, 5) box rows, got shape {tuple(label.shape)}")
    valid = torch.isfinite(label).all(-1)  # padding rows are all-NaN (checked when loading)
    boxes, classes = [], []
    for rows, keep in zip(label, valid):
        kept = rows[keep]
        boxes.append(kept[:, :4].float())
        classes.append(kept[:, 4].long())
    return boxes, classes


def boxes_from_masks(masks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, 1, H, W) binary masks → (N, K, 5) box rows, one box per 8-connected component, class 0.
    Empty masks give negatives (only NaN rows)."""
    from dkbench.geometry.components import component_boxes

    m = np.asarray(masks)
    if m.ndim != 4 or m.shape[1] != 1:
        raise InvalidDataError(f"boxes from masks need (N, 1, H, W) masks, got shape {m.shape}")
    per_image: list[list[np.ndarray]] = [[] for _ in range(len(m))]
    for start in range(0, len(m), chunk):  # bounded memory: the component search holds (chunk, H·W) keys
        part = torch.from_numpy(np.ascontiguousarray(m[start:start + chunk] != 0))
        boxes, image = component_boxes(part)
        for box, i in zip(boxes.numpy(), image.tolist()):
            per_image[start + i].append(box)
    return pad_boxes([np.stack(b) if b else np.zeros((0, 4), np.float32) for b in per_image])


def all_boxes(label: np.ndarray) -> np.ndarray:
    """Every box of a split's (N, K, 5) rows as one (n, 4) float64 array (padding dropped)."""
    rows = np.asarray(label, np.float64).reshape(-1, 5)
    return rows[np.isfinite(rows).all(1), :4]


def box_sizes_and_ratios(boxes: np.ndarray | torch.Tensor) -> tuple:
    """(n, 4) boxes (x_lo, y_lo, x_hi, y_hi) → sizes sqrt(w·h) and aspect ratios h/w (numpy or torch)."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return (w * h) ** 0.5, h / w


def box_masks(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, K, 5) box rows → (N, 1, H, W) uint8 masks of the pixels inside any box of the image.
    A pixel is inside when its centre (col + 0.5, row + 0.5) lies in [lo, hi) on both axes, so
    fractional boxes (after `dataset.resize`) cover the pixels they mostly cover; negatives give
    empty masks."""
    rows = np.asarray(label, np.float64)
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((len(rows), 1, h, w), np.uint8)
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    for i, image_rows in enumerate(rows):
        for x_lo, y_lo, x_hi, y_hi, _ in image_rows[np.isfinite(image_rows).all(-1)]:
            inside_y = (cy >= y_lo) & (cy < y_hi)
            inside_x = (cx >= x_lo) & (cx < x_hi)
            out[i, 0] |= (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)
    return out


def box_counts(label: np.ndarray) -> np.ndarray:
    """(N,) number of boxes of each image of a (N, K, 5) label."""
    return np.isfinite(np.asarray(label)).all(-1).sum(-1)


def check_box_labels(where: str, split: str, label: np.ndarray, ids: np.ndarray, size: int,
                     num_classes: int) -> None:
    """Refuse, in one line naming the image and the fix, box rows that cannot be trained on:
    wrong shape or dtype, partly-NaN rows, boxes with x_hi <= x_lo or y_hi <= y_lo (an empty or
    flipped box), boxes outside the [0, size] image, class indices outside 0..num_classes-1.
    All-NaN rows are padding; an image with only padding is a negative (valid)."""
    fix_shape = ("a detection label is (N, K, 5) float box rows (x_lo, y_lo, x_hi, y_hi, class) with NaN "
                 "padding; a dataset with class labels only (no boxes or masks) cannot be a detection task: "
                 "use one of the *_det datasets (busi_det, kvasir_det, probe_det)")
    if label.ndim != 3 or label.shape[-1] != 5:
        raise InvalidDataError(f"{where}, split {split}: labels have shape {label.shape}; {fix_shape}")
    if not np.issubdtype(label.dtype, np.floating):
        raise InvalidDataError(f"{where}, split {split}: box rows have dtype {label.dtype}; {fix_shape}")
    finite = np.isfinite(label)
    partial = finite.any(-1) & ~finite.all(-1)
    if partial.any():
        i, k = np.argwhere(partial)[0]
        raise InvalidDataError(f"{where}, split {split}, image {ids[i]}: box row {k} = {label[i, k].tolist()} is "
                               f"partly NaN; a row is either a whole box or all-NaN padding")
    rows = label[finite.all(-1)]
    owner = np.argwhere(finite.all(-1))[:, 0]

    def first(bad: np.ndarray, what: str, fix: str) -> None:
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise InvalidDataError(f"{where}, split {split}, image {ids[owner[j]]}: box {rows[j, :4].tolist()} "
                                   f"{what}; {fix}")

    first((rows[:, 2] <= rows[:, 0]) | (rows[:, 3] <= rows[:, 1]), "has x_hi <= x_lo or y_hi <= y_lo",
          "boxes are (x_lo, y_lo, x_hi, y_hi) with hi > lo (swap the corners, or drop empty boxes)")
    first((rows[:, :4] < 0).any(1) | (rows[:, :4] > size).any(1), f"lies outside the {size}x{size} image",
          "box coordinates are pixels of the image the run sees, in [0, size]: clip or rescale them")
    cls = rows[:, 4]
    bad = (cls != np.round(cls)) | (cls < 0) | (cls >= num_classes)
    first(bad, f"has class {cls[bad][0] if bad.any() else ''} outside 0..{num_classes - 1}",
          "class is the foreground class index (num_classes counts foreground classes only)")
    if split in ("val", "test") and len(rows) == 0:
        raise InvalidDataError(f"{where}, split {split}: no image has a box; mAP and FROC (and model selection "
                               f"on them) are undefined without lesions: check the split or the reader")
