"""Per-image knowledge tables → the arrays strategies read: one home for how patient metadata
(numeric and categorical, with missing values) becomes the `metadata` matrix, and how image and
mask files of an official release become the arrays a shared `.npz` holds.

`metadata` is float32 (N, M): a numeric column keeps its value (NaN when missing) and gets a
`<name>_missing` indicator column (1.0 when missing), so a model can tell "missing" from "mean";
a categorical column becomes one-hot columns `<name>=<category>`, all zero when the category is
missing or unknown. `metadata_fusion` standardises the matrix with train-split statistics and
sets NaN to the train mean (0 after standardising).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Column:
    """One metadata field: `values` (N,) — floats (NaN missing) for a numeric column; integer
    codes into `categories` (−1 missing) for a categorical one."""

    name: str
    values: np.ndarray
    categories: tuple[str, ...] | None = None  # None: numeric


def encode_metadata(columns: Sequence[Column]) -> tuple[np.ndarray, list[str]]:
    """The (N, M) float32 matrix and its column names (see the module docstring)."""
    blocks, names = [], []
    for col in columns:
        values = np.asarray(col.values)
        if col.categories is None:
            v = values.astype(np.float32)
            blocks += [v[:, None], np.isnan(v).astype(np.float32)[:, None]]
            names += [col.name, f"{col.name}_missing"]
        else:
            codes = values.astype(np.int64)
            if codes.size and codes.max() >= len(col.categories):
                raise ValueError(f"metadata column {col.name}: code {codes.max()} has no category "
                                 f"(categories: {list(col.categories)})")
            one_hot = np.zeros((len(codes), len(col.categories)), np.float32)
            known = codes >= 0
            one_hot[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(one_hot)
            names += [f"{col.name}={c}" for c in col.categories]
    if not blocks:
        raise ValueError("encode_metadata needs at least one column")
    return np.concatenate(blocks, axis=1), names


def read_image(path: Path | str, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8 RGB, resized with Lanczos (the aspect ratio is not
    kept: the shared dermoscopy files were made the same way, so both layouts give one array)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def read_mask(path: Path | str, size: int) -> np.ndarray:
    """A binary mask file as (size, size) uint8 in {0, 1}: thresholded at > 127, resized
    bilinearly, thresholded again at ≥ 128 (the shared files' rule)."""
    from PIL import Image

    with Image.open(path) as im:
        binary = Image.fromarray(((np.asarray(im.convert("L")) > 127) * 255).astype(np.uint8))
        resized = np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR))
    return (resized >= 128).astype(np.uint8)
