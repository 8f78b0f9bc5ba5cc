"""BUSI breast ultrasound (780 images, 128×128 grey) with lesion masks and captions.

Three variants share one loader: `busi` (normal / benign / malignant), `busi_binary`
(benign vs malignant, normal images dropped) and `busi_seg` (lesion segmentation). All use
the committed, duplicate-aware split `dkbench/data/splits/busi.json`, so the same image is in
the same split in every variant. The captions are label-derived templates: never an input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dkbench.data.registry import MissingDataError, missing_file_message, register_dataset
from dkbench.data.saved_splits import (
    check_masks,
    load_split,
    masks_to_bbox,
    sha256_file,
    split_indices,
    split_notes,
)
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays

FILE = Path("busi") / "busi_128.npz"
NORMAL, BENIGN, MALIGNANT = 0, 1, 2

HOW = (
    "copy busi/busi_128.npz from the project's shared dataset folder (../shared/datasets, see its "
    "README.md and busi/README.md for how it was built). The public source is the BUSI dataset "
    "of Al-Dhabyani et al., Data in Brief 28:104863 (2020), doi:10.1016/j.dib.2019.104863 "
    "(Kaggle mirror 'Breast Ultrasound Images Dataset'); busi/README.md gives the preprocessing "
    "to rebuild the npz from the original PNGs."
)
CAPTION_WARNING = (
    "extras['text'] holds BUSI captions that are label-derived templates (they name the class): "
    "never use them as model input for classification; they are for image-text tests only."
)
DUPLICATE_WARNING = (
    "'benign (433)' and 'malignant (145)' are the same image with different labels (and a few "
    "other near-identical pairs cross classes); they are grouped into one split, not removed."
)


def _check_options(name: str, options: dict, allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"dataset '{name}': unknown option(s) {sorted(unknown)}; valid options: {sorted(allowed) or 'none'}"
        )


def _flag(name: str, options: dict, key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"dataset '{name}': option {key} must be true or false, got {value!r}")
    return bool(value)


def _load(data_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = Path(data_dir) / FILE
    if not path.is_file():
        raise MissingDataError(missing_file_message(path, what="BUSI file busi/busi_128.npz", how=HOW))
    with np.load(path) as z:
        missing = {"images", "masks", "labels", "ids", "captions"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: lacks arrays {sorted(missing)}; expected the file described in busi/README.md")
        arrays = {k: z[k] for k in ("images", "masks", "labels", "ids", "captions")}
    images, masks = arrays["images"], arrays["masks"]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path}: images have shape {images.shape} dtype {images.dtype}; expected (N, H, W) uint8")
    check_masks(masks, images, path)
    labels = arrays["labels"]
    if labels.shape != (len(images),) or labels.min() < NORMAL or labels.max() > MALIGNANT:
        raise ValueError(f"{path}: labels must be (N,) in 0..2 (normal, benign, malignant)")
    return path, arrays


def _read(data_dir: Path, spec: DatasetSpec, *, mode: str, include_normal: bool) -> DatasetArrays:
    path, a = _load(data_dir)
    images, masks, labels = a["images"], a["masks"], a["labels"]
    if images.shape[1:] != (spec.size, spec.size):
        raise ValueError(
            f"dataset '{spec.name}': {path} holds {images.shape[1]}×{images.shape[2]} images but the "
            f"config says size {spec.size}"
        )
    doc = load_split("busi")
    keep = None if include_normal else labels != NORMAL
    index = split_indices(a["ids"], doc, data_path=path, keep=keep)
    checksum = sha256_file(path)

    splits = {}
    for split, idx in index.items():
        mask = np.ascontiguousarray(masks[idx][:, None])  # (N, 1, H, W) uint8
        extras = {"mask": mask, "bbox": masks_to_bbox(mask), "text": a["captions"][idx]}
        if mode == "segmentation":
            label = mask
        else:
            label = labels[idx].astype(np.int64)
            if mode == "binary":
                label = label - BENIGN  # 0 benign, 1 malignant
        splits[split] = SplitArrays(
            image=np.ascontiguousarray(images[idx][:, None]),  # (N, 1, H, W) uint8
            label=label,
            ids=a["ids"][idx],
            extras={k: v for k, v in extras.items() if k in spec.provides},
        )

    notes = split_notes(doc, checksum)
    notes["data_file"] = str(FILE)
    notes["warnings"].append(DUPLICATE_WARNING)  # type: ignore[union-attr]
    if "text" in spec.provides:
        notes["label_derived"] = ["text"]
        notes["warnings"].append(CAPTION_WARNING)  # type: ignore[union-attr]
    if mode == "multiclass" and not include_normal:
        notes["warnings"].append(  # type: ignore[union-attr]
            "include_normal=false: no normal images, but labels keep 0 normal / 1 benign / 2 malignant."
        )
    notes["include_normal"] = include_normal
    return DatasetArrays(spec=spec, splits=splits, checksum=checksum, notes=notes)


@register_dataset("busi")
def read_busi(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """3-class BUSI: labels 0 normal, 1 benign, 2 malignant. Option `include_normal` (default true)."""
    _check_options(spec.name, options, {"include_normal"})
    return _read(data_dir, spec, mode="multiclass", include_normal=_flag(spec.name, options, "include_normal", True))


@register_dataset("busi_binary")
def read_busi_binary(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """Benign (0) vs malignant (1); normal images are dropped."""
    _check_options(spec.name, options, set())
    return _read(data_dir, spec, mode="binary", include_normal=False)


@register_dataset("busi_seg")
def read_busi_seg(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """Lesion segmentation: label = mask (N, 1, H, W) uint8. Option `include_normal` (default
    false: lesion images only; true adds the normal images with empty masks)."""
    _check_options(spec.name, options, {"include_normal"})
    return _read(data_dir, spec, mode="segmentation", include_normal=_flag(spec.name, options, "include_normal", False))
