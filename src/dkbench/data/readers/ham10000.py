"""HAM10000 benchmark subset: 1171 dermoscopic images (one per lesion), 7 classes, with patient
age / sex / body site and lesion masks.

Images and metadata: P. Tschandl, C. Rosendahl, H. Kittler, "The HAM10000 dataset, a large
collection of multi-source dermatoscopic images of common pigmented skin lesions", Sci. Data
5:180161 (2018), doi:10.1038/sdata.2018.161. Lesion masks: P. Tschandl et al., "Human-computer
collaboration for skin cancer recognition", Nat. Med. 26:1229-1234 (2020),
doi:10.1038/s41591-020-0942-0.

Two layouts under `<data_dir>/ham10000/` (option `layout`; `auto` takes the shared file when it
is there, else the official release):

- shared: `ham10000_128.npz`, the project's compact file (see its README.md);
- official: the Harvard Dataverse release (doi:10.7910/DVN/DBW86T; the same files are on Kaggle
  as kmader/skin-cancer-mnist-ham10000): `HAM10000_metadata.csv` (lesion_id, image_id, dx,
  dx_type, age, sex, localization[, dataset]), the images `<image_id>.jpg` in
  `HAM10000_images_part_1/` and `HAM10000_images_part_2/` (or one `images/` folder), and the
  masks `HAM10000_segmentations_lesion_tschandl/<image_id>_segmentation.png`.

Both go through one subset rule (`benchmark_subset`, the shared file's README), one coding (the
constants below) and the committed split `splits/ham10000.json`, so a user with the full
official download gets the shared file's 1171 ids, labels, metadata and masks. `dx_type` (how
the diagnosis was confirmed) is label-derived — follow-up exists only for nevi — and is read by
neither layout.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from dkbench.data.registry import (
    MissingDataError,
    check_data_files,
    data_files,
    missing_file_message,
    register_dataset,
)
from dkbench.data.saved_splits import (
    SplitMismatchError,
    check_masks,
    load_split,
    masks_to_bbox,
    sha256_file,
    split_indices,
    split_notes,
)
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.data.tabular import Column, encode_metadata, read_image, read_mask
from dkbench.errors import InvalidDataError, RunConfigError

FOLDER = Path("ham10000")
SHARED_FILE = "ham10000_128.npz"
#: the official metadata table: Kaggle's name first; Dataverse serves it as `HAM10000_metadata`
#: (original format) or as its ingested `.tab` conversion
METADATA_FILES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab")
#: image folders searched in this order; Kaggle ships lower-case copies of the two parts, and the
#: ISIC 2018 Task 3 training input holds the same 10015 files
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images",
                 "ham10000_images_part_1", "ham10000_images_part_2", "ISIC2018_Task3_Training_Input")
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"
MASK_SUFFIX = "_segmentation.png"

# --- the codings (the shared file's, see its README "Keys") ---------------------------------
CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SEXES = ("female", "male")  # 'unknown' → -1
LOCALIZATIONS = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                 "lower extremity", "neck", "scalp", "trunk", "upper extremity")  # 'unknown' → -1
UNKNOWN = -1
MISSING_TEXT = frozenset({"", "unknown", "na", "nan"})  # spellings of "not recorded"
#: lesions kept per class by the subset rule (df and vasc have fewer: all kept)
PER_CLASS = 200

METADATA_CODING = {
    "age": "years (5-year bins as released); NaN = missing → value column + age_missing indicator",
    "sex": "one-hot sex=female, sex=male; all zero = unknown",
    "localization": f"one-hot over the {len(LOCALIZATIONS)} body sites; all zero = unknown",
}
KNOWLEDGE_SOURCE = {
    "metadata": "patient age, sex and body site recorded with each image in HAM10000_metadata "
                "(Tschandl et al., Sci. Data 2018)",
    "mask": "binary lesion masks HAM10000_segmentations_lesion_tschandl (Tschandl et al., Nat. Med. 2020), "
            "thresholded > 127, resized bilinearly, >= 128",
    "bbox": "box of the lesion mask (x_min, y_min, x_max, y_max), derived, not annotated",
}
SUBSET_RULE = ("one image per lesion_id (the smallest image_id); per class the first "
               f"{PER_CLASS} lesions in sha1(lesion_id) order; rows sorted by image_id")

HOW_SHARED = (
    "copy ham10000/ham10000_128.npz from the project's shared dataset folder (../shared/datasets, see "
    "ham10000/README.md), or put the official HAM10000 release in the same folder (layout=official): "
    "Harvard Dataverse doi:10.7910/DVN/DBW86T (https://doi.org/10.7910/DVN/DBW86T)."
)
HOW_OFFICIAL = (
    "download from the Harvard Dataverse, doi:10.7910/DVN/DBW86T (https://doi.org/10.7910/DVN/DBW86T): "
    "HAM10000_metadata (as the original CSV, saved as HAM10000_metadata.csv), HAM10000_images_part_1.zip "
    "and HAM10000_images_part_2.zip unzipped into HAM10000_images_part_1/ and HAM10000_images_part_2/, and "
    "HAM10000_segmentations_lesion_tschandl.zip (lesion masks); Kaggle kmader/skin-cancer-mnist-ham10000 "
    "has the same images and table."
)
DX_TYPE_WARNING = (
    "dx_type (histo / follow_up / consensus / confocal) is label-derived: follow_up occurs only for nv "
    "and akiec/bcc/mel are all histo. It is read by neither layout and never an input."
)
AGE_WARNING = (
    "age differs strongly by class (mean about 48 y for nv vs 67 y for akiec/bcc in this subset): "
    "legitimate patient metadata but a strong shortcut; compare metadata_fusion with that in mind."
)
BALANCE_WARNING = (
    "classes are capped at 200 lesions each (akiec, bcc, bkl, mel, nv 200; df 73; vasc 98): not the "
    "natural HAM10000 prior, where nv is 67 %."
)
SHARED_IMAGE_WARNING = (
    "the shared file's pixels come from 200×150 heavily compressed re-encodes of the HAM10000 JPEGs "
    "(ham10000/README.md): fine dermoscopic detail is degraded; the official layout reads the originals."
)


@dataclass(frozen=True)
class Table:
    """One row per image: the fields both layouts share, coded as above."""

    image_id: np.ndarray  # (N,) str
    lesion_id: np.ndarray  # (N,) str
    label: np.ndarray  # (N,) int64 index into CLASS_NAMES
    age: np.ndarray  # (N,) float32, NaN missing
    sex: np.ndarray  # (N,) int64 index into SEXES, -1 unknown
    localization: np.ndarray  # (N,) int64 index into LOCALIZATIONS, -1 unknown

    def take(self, idx: np.ndarray) -> Table:
        return Table(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


# --- options and files -----------------------------------------------------------------------
OPTIONS = {"layout": ("auto", "shared", "official"), "subset": ("benchmark", "all")}


def parse_options(name: str, options: dict) -> tuple[str, str]:
    """(layout, subset), or a RunConfigError naming the valid options and values."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise RunConfigError(f"dataset '{name}': unknown option(s) {sorted(unknown)}; valid options: {sorted(OPTIONS)}")
    chosen = {key: str(options.get(key, values[0])) for key, values in OPTIONS.items()}
    for key, value in chosen.items():
        if value not in OPTIONS[key]:
            raise RunConfigError(f"dataset '{name}': option {key}={value!r}; valid values: {list(OPTIONS[key])}")
    if chosen["subset"] == "all":
        # a split for 7470 lesions would be a second split to keep in step with the saved one
        raise RunConfigError(
            f"dataset '{name}': subset=all (every lesion's first image, 7470 images) has no saved split: "
            "src/dkbench/data/splits/ham10000.json covers the benchmark subset (1171 images) only; use subset=benchmark"
        )
    return chosen["layout"], chosen["subset"]


def metadata_path(folder: Path) -> Path:
    """The official metadata table present in `folder` (the first of METADATA_FILES), else the CSV name."""
    return next((folder / n for n in METADATA_FILES if (folder / n).is_file()), folder / METADATA_FILES[0])


def resolve_layout(folder: Path, layout: str) -> str:
    """auto → shared when the npz is there, else official when its table is, else shared (whose
    missing file is then reported, with both ways to obtain the data)."""
    if layout != "auto":
        return layout
    if not (folder / SHARED_FILE).is_file() and metadata_path(folder).is_file():
        return "official"
    return "shared"


def _needs_masks(spec: DatasetSpec) -> bool:
    return bool({"mask", "bbox"} & spec.provides)  # bbox is the mask's box


def check_official_folders(folder: Path, spec: DatasetSpec | None) -> None:
    """Image folders must exist; the mask folder too when the YAML provides mask or bbox."""
    if not any((folder / f).is_dir() for f in IMAGE_FOLDERS):
        raise MissingDataError(missing_file_message(
            folder / IMAGE_FOLDERS[0], what=f"HAM10000 image folder (any of {', '.join(IMAGE_FOLDERS)})",
            how=HOW_OFFICIAL))
    if spec is not None and _needs_masks(spec) and not (folder / MASK_FOLDER).is_dir():
        raise InvalidDataError(
            f"dataset '{spec.name}' provides {sorted({'mask', 'bbox'} & spec.provides)} but the official layout at "
            f"{folder} has no {MASK_FOLDER}/ folder: unzip HAM10000_segmentations_lesion_tschandl.zip (Harvard "
            f"Dataverse doi:10.7910/DVN/DBW86T) there, or drop mask and bbox, e.g. `dataset.provides=[metadata]`"
        )


@data_files("ham10000")
def ham10000_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    layout, _ = parse_options(spec.name if spec else "ham10000", dict(options or {}))
    folder = Path(data_dir) / FOLDER
    if resolve_layout(folder, layout) == "shared":
        return [(folder / SHARED_FILE, f"HAM10000 file {FOLDER / SHARED_FILE}", HOW_SHARED)]
    table = metadata_path(folder)
    if table.is_file():
        check_official_folders(folder, spec)
    return [(table, f"HAM10000 metadata table {FOLDER / table.name}", HOW_OFFICIAL)]


# --- the subset rule ---------------------------------------------------------------------------
def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def benchmark_subset(image_ids, lesion_ids, labels, per_class: int = PER_CLASS) -> np.ndarray:
    """Row indices of the benchmark subset, in image_id order (the shared file's README rule):
    one image per lesion (the smallest image_id), then per class the first `per_class` lesions
    ordered by sha1(lesion_id) — deterministic without a random generator, and unrelated to
    image content or metadata."""
    image_ids, lesion_ids, labels = (np.asarray(a) for a in (image_ids, lesion_ids, labels))
    first: dict[str, int] = {}
    for i, (image, lesion) in enumerate(zip(image_ids.tolist(), lesion_ids.tolist())):
        if lesion not in first or image < image_ids[first[lesion]]:
            first[lesion] = i
    keep: list[int] = []
    for cls in np.unique(labels):
        rows = [i for i in first.values() if labels[i] == cls]
        rows.sort(key=lambda i: _sha1(str(lesion_ids[i])))
        keep += rows[:per_class]
    return np.array(sorted(keep, key=lambda i: image_ids[i]), dtype=np.int64)


# --- official layout -----------------------------------------------------------------------------
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex", "localization")


def _code(path: Path, column: str, values: list[str], names: tuple[str, ...]) -> np.ndarray:
    """Category spellings → index into `names`, -1 for a missing spelling; others refused."""
    index = {n: i for i, n in enumerate(names)}
    bad = sorted({v for v in values if v not in index and v.lower() not in MISSING_TEXT})
    if bad:
        raise InvalidDataError(f"{path}: column {column} has unknown value(s) {bad[:5]}; expected one of "
                               f"{list(names)} or 'unknown' (the HAM10000 release's spellings)")
    return np.array([index.get(v, UNKNOWN) for v in values], dtype=np.int64)


def _ages(path: Path, values: list[str]) -> np.ndarray:
    try:
        return np.array([np.nan if v.lower() in MISSING_TEXT else float(v) for v in values], dtype=np.float32)
    except ValueError as err:
        raise InvalidDataError(f"{path}: column age must be years or empty ({err})") from None


def read_metadata_table(path: Path) -> Table:
    """HAM10000_metadata (comma- or tab-separated, quotes allowed) → Table of every row."""
    text = Path(path).read_text(encoding="utf-8-sig")
    header = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in header and "," not in header else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
    if missing or not rows:
        raise InvalidDataError(f"{path}: lacks the column(s) {missing or 'none'} and has {len(rows)} row(s); expected "
                               "the HAM10000 metadata table: lesion_id,image_id,dx,dx_type,age,sex,localization")
    col = {c: [(r[c] or "").strip() for r in rows] for c in REQUIRED_COLUMNS}
    image_ids = np.array(col["image_id"])
    if len(np.unique(image_ids)) != len(image_ids):
        raise InvalidDataError(f"{path}: image_id values repeat; each image must have one row")
    return Table(
        image_id=image_ids,
        lesion_id=np.array(col["lesion_id"]),
        label=_code(path, "dx", col["dx"], CLASS_NAMES),
        age=_ages(path, col["age"]),
        sex=_code(path, "sex", col["sex"], SEXES),
        localization=_code(path, "localization", col["localization"], LOCALIZATIONS),
    )


def _image_files(folder: Path) -> dict[str, Path]:
    """image_id → its JPEG, over IMAGE_FOLDERS (the first folder holding an id wins)."""
    found: dict[str, Path] = {}
    for sub in IMAGE_FOLDERS:
        if (folder / sub).is_dir():
            for path in (folder / sub).glob("*.jpg"):
                found.setdefault(path.stem, path)
    return found


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingDataError(missing_file_message(path, what=what, how=HOW_OFFICIAL))
    return path


def read_official(folder: Path, spec: DatasetSpec, table: Table, with_masks: bool):
    """Images (N, H, W, 3) and masks (N, H, W) | None at spec.size for the table's rows, and a
    checksum of every file read (the metadata table's hash is folded in by the caller)."""
    images_by_id = _image_files(folder)
    digest = hashlib.sha256()
    images = np.empty((len(table.image_id), spec.size, spec.size, 3), np.uint8)
    masks = np.empty((len(table.image_id), spec.size, spec.size), np.uint8) if with_masks else None
    for i, image_id in enumerate(table.image_id.tolist()):
        image = _require(images_by_id.get(image_id, folder / IMAGE_FOLDERS[0] / f"{image_id}.jpg"),
                         f"HAM10000 image {image_id}.jpg (searched {', '.join(IMAGE_FOLDERS)})")
        images[i] = read_image(image, spec.size)
        digest.update(sha256_file(image).encode())
        if masks is not None:
            mask = _require(folder / MASK_FOLDER / f"{image_id}{MASK_SUFFIX}", "HAM10000 lesion mask")
            masks[i] = read_mask(mask, spec.size)
            digest.update(sha256_file(mask).encode())
    return images, masks, digest.hexdigest()


# --- shared layout -------------------------------------------------------------------------------
SHARED_KEYS = ("images", "masks", "labels", "ids", "lesion_id", "age", "sex", "localization",
               "class_names", "localization_names")


def read_shared(path: Path, spec: DatasetSpec) -> tuple[Table, np.ndarray, np.ndarray]:
    """The npz → (Table, images (N, H, W, 3), masks (N, H, W)); its codings must be ours."""
    with np.load(path, allow_pickle=False) as z:
        missing = sorted(set(SHARED_KEYS) - set(z.files))
        if missing:
            raise InvalidDataError(f"{path}: lacks arrays {missing}; expected the file described in ham10000/README.md")
        a = {k: z[k] for k in SHARED_KEYS}  # dx_type is never loaded
    for key, names in (("class_names", CLASS_NAMES), ("localization_names", LOCALIZATIONS)):
        if tuple(a[key].astype(str)) != names:
            raise InvalidDataError(f"{path}: {key} {a[key].tolist()} differ from the reader's coding {list(names)}; "
                                   "rebuild the file as ham10000/README.md describes")
    images = a["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidDataError(f"{path}: images have shape {images.shape} dtype {images.dtype}; "
                               "expected (N, H, W, 3) uint8")
    if images.shape[1:3] != (spec.size, spec.size):
        raise InvalidDataError(
            f"dataset '{spec.name}': {path} holds {images.shape[1]}×{images.shape[2]} images but the config says size "
            f"{spec.size}; keep size {images.shape[1]} and set dataset.resize={spec.size}, or use layout=official"
        )
    try:
        check_masks(a["masks"], images, path)
    except ValueError as err:
        raise InvalidDataError(str(err)) from None
    table = Table(image_id=a["ids"].astype(str), lesion_id=a["lesion_id"].astype(str),
                  label=a["labels"].astype(np.int64), age=a["age"].astype(np.float32),
                  sex=a["sex"].astype(np.int64), localization=a["localization"].astype(np.int64))
    if table.label.min() < 0 or table.label.max() >= len(CLASS_NAMES):
        raise InvalidDataError(f"{path}: labels must be in 0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)})")
    return table, images, a["masks"].astype(np.uint8)


# --- both layouts ----------------------------------------------------------------------------------
def encode_table(table: Table) -> tuple[np.ndarray, list[str]]:
    """The `metadata` matrix: age (+ age_missing), sex and localization one-hot (tabular.py rule)."""
    return encode_metadata([
        Column("age", table.age),
        Column("sex", table.sex, SEXES),
        Column("localization", table.localization, LOCALIZATIONS),
    ])


def _split_index(table: Table, doc: dict, source: Path, layout: str) -> dict[str, np.ndarray]:
    try:
        return split_indices(table.image_id, doc, data_path=source)
    except SplitMismatchError as err:
        if layout != "official":
            raise
        raise SplitMismatchError(
            f"{err} The official layout's benchmark subset is computed from the complete HAM10000 metadata "
            f"table (10015 images of 7470 lesions); a partial or edited table selects other images."
        ) from None


def _notes(doc: dict, spec: DatasetSpec, layout: str, source: Path, checksum: str, names: list[str]) -> dict:
    # the split was made from the shared file: its hash is meaningful for that layout only
    notes = split_notes(doc, checksum if layout == "shared" else "")
    notes.update({
        "layout": layout,
        "data_file": str(FOLDER / source.name),
        "subset": SUBSET_RULE,
        "label_derived": ["dx_type"],
        "metadata_names": list(names),  # what metadata_fusion reads
        "metadata_columns": list(names),
        "metadata_coding": dict(METADATA_CODING),
        "knowledge_source": {k: v for k, v in KNOWLEDGE_SOURCE.items() if k in spec.provides},
    })
    notes["warnings"] += [DX_TYPE_WARNING, AGE_WARNING, BALANCE_WARNING]  # type: ignore[operator]
    if layout == "shared":
        notes["warnings"].append(SHARED_IMAGE_WARNING)  # type: ignore[union-attr]
    return notes


@register_dataset("ham10000")
def read_ham10000(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """7-class HAM10000 subset: labels 0 akiec, 1 bcc, 2 bkl, 3 df, 4 mel, 5 nv, 6 vasc; extras
    `mask` (N, 1, H, W) {0, 1}, `bbox` from the mask, `metadata` (N, 18) float32 (age, age_missing,
    sex one-hot, 14 localization one-hots). Options `layout` (auto | shared | official) and
    `subset` (benchmark; `all` is refused: the saved split covers the benchmark subset only)."""
    layout = resolve_layout(Path(data_dir) / FOLDER, parse_options(spec.name, options)[0])
    check_data_files("ham10000", data_dir, spec, {**options, "layout": layout})
    folder = Path(data_dir) / FOLDER
    doc = load_split("ham10000")
    if layout == "shared":
        source = folder / SHARED_FILE
        table, images, masks = read_shared(source, spec)
        checksum = sha256_file(source)
        index = _split_index(table, doc, source, layout)
    else:
        source = metadata_path(folder)
        full = read_metadata_table(source)
        table = full.take(benchmark_subset(full.image_id, full.lesion_id, full.label, per_class=PER_CLASS))
        index = _split_index(table, doc, source, layout)  # before the images: a wrong table fails fast
        images, masks, files_digest = read_official(folder, spec, table, _needs_masks(spec))
        checksum = hashlib.sha256(f"{sha256_file(source)}:{files_digest}".encode()).hexdigest()
    metadata, names = encode_table(table)

    splits = {}
    for split, idx in index.items():
        extras: dict[str, np.ndarray] = {"metadata": metadata[idx]}
        if masks is not None:
            extras["mask"] = np.ascontiguousarray(masks[idx][:, None])  # (N, 1, H, W) uint8
            extras["bbox"] = masks_to_bbox(extras["mask"])
        splits[split] = SplitArrays(
            image=np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2)),  # (N, 3, H, W) uint8
            label=table.label[idx],
            ids=table.image_id[idx],
            extras={k: v for k, v in extras.items() if k in spec.provides},
        )
    notes = _notes(doc, spec, layout, source, checksum, names)
    empty = int((~masks.reshape(len(masks), -1).any(axis=1)).sum()) if masks is not None else 0
    if empty:  # boxes of empty masks are NaN rows; the shared file has none at 128 px
        notes["warnings"].append(f"{empty} lesion mask(s) are empty at {spec.size} px")  # type: ignore[union-attr]
    return DatasetArrays(spec=spec, splits=splits, checksum=checksum, notes=notes)
