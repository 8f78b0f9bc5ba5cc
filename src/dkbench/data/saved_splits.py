"""Saved, committed splits (`dkbench/data/splits/<name>.json`) and the array helpers that the
readers built on them share (file checksum, boxes from masks).

A split file lists sample ids, not indices, so it stays valid when the data file is rebuilt
in another order. `scripts/make_splits.py` writes the files; readers call `split_indices` to
turn one into index arrays for their npz, which fails loudly when the two do not match.
Ids under `excluded` (members of cross-label duplicate groups: the same frame labelled twice)
belong to the data file but to no split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dkbench.data.spec import SPLITS
from dkbench.errors import UserError

#: Package data folder with one `<dataset>.json` per dataset (no `__init__.py`: not a module).
SPLITS_DIR = Path(__file__).resolve().parent / "splits"

REGENERATE = "regenerate it with `python scripts/make_splits.py --data-dir <data root>`"


class SplitMismatchError(UserError, ValueError):
    """A saved split file and the data file it is applied to disagree on the sample ids."""


def split_path(name: str) -> Path:
    return SPLITS_DIR / f"{name}.json"


def load_split(name: str, path: Path | None = None) -> dict:
    """Read a saved split file and check its structure."""
    path = Path(path) if path is not None else split_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"split file for '{name}' not found at {path}; {REGENERATE}.")
    doc = json.loads(path.read_text())
    missing = [k for k in ("dataset", "source_sha256", "method", "seed", "groups", *SPLITS) if k not in doc]
    if missing:
        raise ValueError(f"split file {path} lacks keys {missing}; {REGENERATE}.")
    doc.setdefault("excluded", [])  # files written before exclusions existed have none
    doc.setdefault("cross_label_groups", [])
    seen: dict[str, str] = {}
    for split in (*SPLITS, "excluded"):
        for sid in doc[split]:
            if sid in seen:
                raise ValueError(
                    f"split file {path}: id '{sid}' is in both '{seen[sid]}' and '{split}'; {REGENERATE}."
                )
            seen[sid] = split
    doc["_path"] = str(path)
    return doc


def split_indices(
    ids: np.ndarray,
    doc: dict,
    *,
    data_path: Path | str,
    keep: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Index arrays (ascending, i.e. in data-file order) of each split for the file's `ids`.

    Every id of the split file must be in `ids` and every id of `ids` in one split or in the
    file's `excluded` list; otherwise a `SplitMismatchError` names both files. `keep` (bool per
    sample) then drops samples a variant leaves out (BUSI without its normal images).
    """
    ids = np.asarray(ids).astype(str)
    split_file = doc.get("_path", f"{doc.get('dataset', '?')}.json")
    if len(np.unique(ids)) != len(ids):
        raise SplitMismatchError(f"data file {data_path} has duplicate ids; it cannot be matched to {split_file}.")
    position = {sid: i for i, sid in enumerate(ids.tolist())}
    listed = [sid for split in (*SPLITS, "excluded") for sid in doc.get(split, [])]
    unknown = [sid for sid in listed if sid not in position]
    unlisted = sorted(set(position) - set(listed))
    if unknown or unlisted:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} id(s) of the split file are not in the data file (e.g. {unknown[:3]})")
        if unlisted:
            parts.append(f"{len(unlisted)} id(s) of the data file are in no split (e.g. {unlisted[:3]})")
        raise SplitMismatchError(
            f"data file {data_path} does not match split file {split_file}: {'; '.join(parts)}. "
            f"Use the data file the split was made from (sha256 {doc.get('source_sha256', '?')}) "
            f"or {REGENERATE}."
        )
    out = {}
    for split in SPLITS:
        idx = np.sort(np.fromiter((position[sid] for sid in doc[split]), dtype=np.int64, count=len(doc[split])))
        if keep is not None:
            idx = idx[np.asarray(keep, dtype=bool)[idx]]
        out[split] = idx
    return out


def split_notes(doc: dict, checksum: str) -> dict[str, object]:
    """What a run's metadata should record about the split; warns when the file has changed."""
    notes: dict[str, object] = {
        "split_file": Path(doc.get("_path", "")).name,
        "split_method": doc["method"],
        "split_seed": doc["seed"],
        "split_groups": len(doc["groups"]),
        "split_excluded": len(doc.get("excluded", [])),
        "warnings": [],
    }
    if doc.get("excluded"):
        notes["warnings"].append(  # type: ignore[union-attr]
            f"{len(doc['excluded'])} image(s) are in no split: the {len(doc.get('cross_label_groups', []))} "
            f"duplicate group(s) whose members carry different labels (listed in "
            f"{notes['split_file']} under 'cross_label_groups') are excluded as label noise."
        )
    if checksum and doc["source_sha256"] and checksum != doc["source_sha256"]:
        notes["warnings"].append(  # type: ignore[union-attr]
            f"data file sha256 {checksum[:12]}… differs from the one split file "
            f"{notes['split_file']} was made from ({doc['source_sha256'][:12]}…); the ids match, "
            f"so the split is used, but the duplicate groups may be stale: {REGENERATE}."
        )
    return notes


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def masks_to_bbox(masks: np.ndarray) -> np.ndarray:
    """(N, [1,] H, W) masks → float32 (N, 4) boxes (x_min, y_min, x_max, y_max), max exclusive.

    Rows of empty masks are NaN (`dkbench.geometry.boxes.box_from_mask`).
    """
    m = np.asarray(masks)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"masks_to_bbox expects one mask channel, got shape {m.shape}")
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks_to_bbox expects (N, H, W) or (N, 1, H, W), got shape {m.shape}")
    import torch  # lazy: split files and specs are read without torch (the sweep planner)

    from dkbench.geometry.boxes import box_from_mask

    # the one box-from-mask rule: NaN rows for empty masks
    return box_from_mask(torch.from_numpy(np.ascontiguousarray(m[:, None] != 0))).numpy().astype(np.float32)


def check_masks(masks: np.ndarray, images: np.ndarray, path: Path | str) -> None:
    """Masks must be (N, H, W) like the images' first three axes, and binary."""
    if masks.shape != images.shape[:3]:
        raise ValueError(
            f"{path}: masks have shape {masks.shape} but images {images.shape}; expected masks "
            f"(N, H, W) matching the images' N, H, W."
        )
    if masks.dtype != np.uint8 and masks.dtype != bool:
        raise ValueError(f"{path}: masks have dtype {masks.dtype}; expected uint8 in {{0, 1}}.")
    if masks.size and masks.max() > 1:
        raise ValueError(f"{path}: masks are not binary (max {masks.max()}); expected values in {{0, 1}}.")
