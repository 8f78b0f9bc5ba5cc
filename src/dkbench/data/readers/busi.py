"""BUSI breast ultrasound (780 images, 128×128 grey) with lesion masks and captions.

Three variants share one loader: `busi` (normal / benign / malignant), `busi_binary`
(benign vs malignant, normal images dropped) and `busi_seg` (lesion segmentation). All use
the committed, duplicate-aware split `dkbench/data/splits/busi.json`, so the same image is in
the same split in every variant (and the images of cross-label duplicate groups in none). The
captions are label-derived templates: never an input.

`busi` and `busi_binary` also provide `attributes`: BI-RADS-like lesion descriptors DERIVED
from the lesion masks (BUSI has no radiologist attribute labels), see `derive_attributes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dkbench.data.registry import check_data_files, data_files, register_dataset
from dkbench.data.saved_splits import (
    check_masks,
    load_split,
    masks_to_bbox,
    sha256_file,
    split_indices,
    split_notes,
)
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.errors import InvalidDataError, RunConfigError

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
    "Near-duplicate frames (same frame with other caliper marks, consecutive frames) are grouped "
    "into one split by dkbench.data.duplicates. Groups whose members carry different labels (e.g. "
    "'benign (433)' = 'malignant (145)', 'benign (164)' = 'malignant (52)') are label noise and "
    "excluded from every split; busi.json lists them under 'cross_label_groups'."
)


# --- mask-derived attributes -----------------------------------------------------------
ATTRIBUTE_NAMES = ["shape", "orientation", "margin", "size"]
ATTRIBUTE_VALUES = {
    "shape": ["regular", "irregular"],
    "orientation": ["parallel (wider-than-tall)", "not parallel (taller-than-wide)"],
    "margin": ["smooth convex outline", "lobulated / angular outline"],
    "size": ["small", "large"],
}
#: Attribute value of images without a lesion (normal images): the loss's ignore_index.
MISSING_ATTRIBUTE = -1
ATTRIBUTE_DEFINITIONS = {
    "shape": "1 (irregular) iff solidity = mask area / convex-hull area (skimage "
             "convex_hull_image) < threshold = median solidity of the TRAIN split's lesion masks",
    "orientation": "1 (taller-than-wide) iff bbox height > bbox width, i.e. depth/width ratio > 1 "
                   "(fixed, from the literature: Stavros et al., Radiology 196:123-134, 1995; "
                   "ACR BI-RADS ultrasound 'not parallel')",
    "margin": "1 (lobulated / angular) iff convexity = convex-hull perimeter / mask perimeter "
              "(skimage.measure.perimeter) < threshold = median convexity of the TRAIN split's "
              "lesion masks (BUSI: 1.0, so 1 means 'outline not convex')",
    "size": "1 (large) iff mask area in pixels (at the file's 128 px) > threshold = median area "
            "of the TRAIN split's lesion masks",
}
ATTRIBUTE_WARNING = (
    "extras['attributes'] are DERIVED from the lesion masks (shape descriptors with thresholds "
    "from the train split or the literature), not radiologist BI-RADS labels. Several lesions in "
    "one mask are described as their union. BUSI's benign masks are mostly traced smoothly and its "
    "malignant masks irregularly, so the derived shape and margin are strongly label-correlated "
    "(on all 647 lesion images, 1 - solidity has AUROC ~0.94 and 1 - convexity ~0.98 for "
    "malignancy): use them as auxiliary training targets only. rot90 augmentation would swap "
    "orientation."
)
_descriptor_cache: dict[str, dict[str, np.ndarray]] = {}


def mask_descriptors(masks: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W) binary masks → per-mask float64 descriptors (NaN where the mask is empty):
    solidity, convexity (hull perimeter / perimeter, capped at 1), aspect (bbox h / w), area."""
    from skimage.measure import perimeter
    from skimage.morphology import convex_hull_image

    m = np.asarray(masks) > 0
    out = {k: np.full(len(m), np.nan) for k in ("solidity", "convexity", "aspect", "area")}
    for i, mk in enumerate(m):
        area = int(mk.sum())
        if area == 0:
            continue
        hull = convex_hull_image(mk)
        out["solidity"][i] = area / max(int(hull.sum()), area)
        p = perimeter(mk)
        out["convexity"][i] = min(1.0, perimeter(hull) / p) if p > 0 else 1.0
        ys, xs = np.nonzero(mk)
        out["aspect"][i] = (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)
        out["area"][i] = area
    return out


def derive_attributes(desc: dict[str, np.ndarray], train: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Descriptors → (N, 4) int64 attributes in ATTRIBUTE_NAMES order (-1 where no lesion) and
    the thresholds used; `train` selects the rows whose lesions set the median thresholds."""
    has = ~np.isnan(desc["area"])
    ref = np.asarray(train) & has
    if not ref.any():
        raise ValueError("BUSI attributes: no lesion mask in the train split to set the thresholds from")
    thr = {
        "shape_solidity": float(np.median(desc["solidity"][ref])),
        "orientation_aspect": 1.0,
        "margin_convexity": float(np.median(desc["convexity"][ref])),
        "size_area": float(np.median(desc["area"][ref])),
    }
    with np.errstate(invalid="ignore"):
        attrs = np.stack([
            desc["solidity"] < thr["shape_solidity"],
            desc["aspect"] > thr["orientation_aspect"],
            desc["convexity"] < thr["margin_convexity"],
            desc["area"] > thr["size_area"],
        ], axis=1).astype(np.int64)
    attrs[~has] = MISSING_ATTRIBUTE
    return attrs, thr


def _attributes(masks: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, checksum: str):
    """Attributes of every image of the file (normal images: -1) and the thresholds."""
    key = f"{checksum}:{masks.shape}"
    if key not in _descriptor_cache:
        lesion = labels != NORMAL
        desc = {k: np.full(len(masks), np.nan) for k in ("solidity", "convexity", "aspect", "area")}
        for k, v in mask_descriptors(masks[lesion]).items():
            desc[k][lesion] = v
        _descriptor_cache[key] = desc
    desc = _descriptor_cache[key]
    train = np.zeros(len(masks), bool)
    train[train_idx] = True
    train &= labels != NORMAL
    return derive_attributes(desc, train)


def _check_options(name: str, options: dict, allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise RunConfigError(
            f"dataset '{name}': unknown option(s) {sorted(unknown)}; valid options: {sorted(allowed) or 'none'}"
        )


def _flag(name: str, options: dict, key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise RunConfigError(f"dataset '{name}': option {key} must be true or false, got {value!r}")
    return bool(value)


def _load(data_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = Path(data_dir) / FILE
    check_data_files("busi", data_dir, None, {})
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "masks", "labels", "ids", "captions"} - set(z.files)
        if missing:
            raise InvalidDataError(f"{path}: lacks arrays {sorted(missing)}; expected the file described in busi/README.md")
        arrays = {k: z[k] for k in ("images", "masks", "labels", "ids", "captions")}
    images, masks = arrays["images"], arrays["masks"]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InvalidDataError(f"{path}: images have shape {images.shape} dtype {images.dtype}; expected (N, H, W) uint8")
    check_masks(masks, images, path)
    labels = arrays["labels"]
    if labels.shape != (len(images),) or labels.min() < NORMAL or labels.max() > MALIGNANT:
        raise InvalidDataError(f"{path}: labels must be (N,) in 0..2 (normal, benign, malignant)")
    return path, arrays


def _read(data_dir: Path, spec: DatasetSpec, *, mode: str, include_normal: bool) -> DatasetArrays:
    path, a = _load(data_dir)
    images, masks, labels = a["images"], a["masks"], a["labels"]
    if images.shape[1:] != (spec.size, spec.size):
        raise InvalidDataError(
            f"dataset '{spec.name}': {path} holds {images.shape[1]}×{images.shape[2]} images but the "
            f"config says size {spec.size}"
        )
    doc = load_split("busi")
    keep = None if include_normal else labels != NORMAL
    index = split_indices(a["ids"], doc, data_path=path, keep=keep)
    checksum = sha256_file(path)
    attributes = thresholds = None
    if "attributes" in spec.provides:
        attributes, thresholds = _attributes(masks, labels, index["train"], checksum)

    splits = {}
    for split, idx in index.items():
        mask = np.ascontiguousarray(masks[idx][:, None])  # (N, 1, H, W) uint8
        extras = {"mask": mask, "bbox": masks_to_bbox(mask), "text": a["captions"][idx]}
        if attributes is not None:
            extras["attributes"] = attributes[idx]
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
    if attributes is not None:
        notes["attribute_names"] = list(ATTRIBUTE_NAMES)
        notes["attribute_values"] = {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
        notes["attribute_missing_value"] = MISSING_ATTRIBUTE
        notes["attribute_source"] = "derived from the lesion masks (not radiologist labels)"
        notes["attribute_definitions"] = dict(ATTRIBUTE_DEFINITIONS)
        notes["attribute_thresholds"] = thresholds
        notes["warnings"].append(ATTRIBUTE_WARNING)  # type: ignore[union-attr]
    if mode == "multiclass" and not include_normal:
        notes["warnings"].append(  # type: ignore[union-attr]
            "include_normal=false: no normal images, but labels keep 0 normal / 1 benign / 2 malignant."
        )
    notes["include_normal"] = include_normal
    return DatasetArrays(spec=spec, splits=splits, checksum=checksum, notes=notes)


#: each reader's options (checked before anything is loaded, and again by the reader)
OPTIONS = {"busi": {"include_normal"}, "busi_binary": set(), "busi_seg": {"include_normal"}}


def _declare_files(reader: str) -> None:
    @data_files(reader)
    def busi_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
        _check_options(spec.name if spec else reader, options, OPTIONS[reader])
        return [(Path(data_dir) / FILE, "BUSI file busi/busi_128.npz", HOW)]


for _reader in OPTIONS:
    _declare_files(_reader)


@register_dataset("busi")
def read_busi(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """3-class BUSI: labels 0 normal, 1 benign, 2 malignant. Option `include_normal` (default true)."""
    _check_options(spec.name, options, OPTIONS["busi"])
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
