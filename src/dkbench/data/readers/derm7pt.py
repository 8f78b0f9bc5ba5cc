"""Derm7pt, the seven-point checklist dermatology dataset (release_v0): 1011 skin lesions, each
with a dermoscopic and a clinical photograph, the 7-point checklist criteria scored by experts,
patient metadata and the official train / valid / test indexes.

J. Kawahara, S. Daneshvar, G. Argenziano, G. Hamarneh, "Seven-Point Checklist and Skin Lesion
Classification using Multitask Multimodal Neural Nets", IEEE J. Biomed. Health Inform.
23(2):538-546, 2019, doi:10.1109/JBHI.2018.2824327 (data: http://derm.cs.sfu.ca/). The checklist:
G. Argenziano et al., Arch. Dermatol. 134(12):1563-1570, 1998.

Task: the 5 classes of Kawahara et al. (their `derm7pt.dataset.Derm7PtDatasetGroupInfrequent`):
BCC, NEV (all nevi), MEL (all melanoma variants), MISC (dermatofibroma, lentigo, melanosis,
miscellaneous, vascular lesion), SK. Image = the dermoscopic photograph. Extras:

- `attributes` (N, 7) int64: the seven criteria, an auxiliary TARGET (attribute_multitask), never
  an input at test time; −1 = not scored (nothing is missing in release_v0);
- `metadata` (N, 14) float32: sex, elevation and location, one-hot (`tabular.encode_metadata`);
- `views` (N, 2, 3, H, W) uint8: view 0 the dermoscopic image (= `image`), view 1 the clinical one.

Never read (label-derived, see the YAML's `label_derived`): management (decided after the
diagnosis), seven_point_score (a weighted sum of the criteria), level_of_diagnostic_difficulty (a
rater judgement made with the diagnosis known), the fine-grained diagnosis and melanoma.

Two layouts under `<data_dir>/derm7pt/` (option `layout`: auto | shared | official):

- shared: `derm7pt_128.npz` (dermoscopic view + all knowledge) and `derm7pt_clinic_128.npz`
  (clinical view, read only when `views` is provided), built as derm7pt/README.md says;
- official: the release as downloaded, `release_v0/meta/meta.csv` (one row per case),
  `release_v0/meta/{train,valid,test}_indexes.csv` (a header `indexes`, then 0-based rows of
  meta.csv, not sorted) and `release_v0/images/<clinic or derm path>`, read the way Kawahara's
  `derm7pt` package reads them (`pd.read_csv(...)['indexes']`, `df.iloc[indexes]`).

Both become one `_Cases` table (meta.csv row order) with the codings below, so both layouts give
identical arrays: rows of a split in meta.csv order, ids = the dermoscopic file stem, images
resized with Lanczos to the square (aspect 3:2 squashed, no border crop), as the shared files were.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.registry import check_data_files, data_files, register_dataset
from dkbench.data.saved_splits import sha256_file
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays
from dkbench.data.tabular import Column, encode_metadata, read_image
from dkbench.errors import InvalidDataError, RunConfigError

ROOT = Path("derm7pt")
SHARED_FILE = ROOT / "derm7pt_128.npz"
SHARED_CLINIC_FILE = ROOT / "derm7pt_clinic_128.npz"
SHARED_SIZE = 128
RELEASE = ROOT / "release_v0"
META_FILE = RELEASE / "meta" / "meta.csv"
#: our split name → the release's index file (its "valid" is our "val")
INDEX_FILES = {split: RELEASE / "meta" / f"{stem}_indexes.csv"
               for split, stem in zip(SPLITS, ("train", "valid", "test"))}
IMAGES_DIR = RELEASE / "images"
URL = "http://derm.cs.sfu.ca/"

HOW_OFFICIAL = (
    f"download the Derm7pt release_v0 from {URL} (Kawahara et al., IEEE JBHI 23(2):538-546, 2019; "
    "academic research use only) and unpack it so that <data_dir>/derm7pt/release_v0/ holds meta/meta.csv, "
    "meta/train_indexes.csv, meta/valid_indexes.csv, meta/test_indexes.csv and images/<folder>/<file>"
)
HOW_SHARED = (
    "copy derm7pt/derm7pt_128.npz and derm7pt/derm7pt_clinic_128.npz from the project's shared dataset folder "
    "(../shared/datasets, see derm7pt/README.md for how they were built), or use the official release "
    f"(dataset.options.layout=official): {HOW_OFFICIAL}"
)

CLASS_NAMES = ("BCC", "NEV", "MEL", "MISC", "SK")
#: meta.csv diagnosis → class, exactly Kawahara's `Derm7PtDatasetGroupInfrequent.diagnosis` lists
#: (which also name a few strings that release_v0 never uses, e.g. "nevus", "DF/LT/MLS/MISC")
DIAGNOSIS_GROUPS = {
    "BCC": ("basal cell carcinoma",),
    "NEV": ("nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
            "recurrent nevus", "reed or spitz nevus"),
    "MEL": ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)", "melanoma metastasis"),
    "MISC": ("DF/LT/MLS/MISC", "dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
    "SK": ("seborrheic keratosis",),
}
CLASS_OF = {diagnosis: CLASS_NAMES.index(cls) for cls, names in DIAGNOSIS_GROUPS.items() for diagnosis in names}

#: the seven criteria in the order of Kawahara's `Derm7PtDataset.tags`, each value list in the
#: order of its `nums` (the ungrouped values, as the shared npz's `criteria_coding` has them)
CRITERIA: dict[str, tuple[str, ...]] = {
    "pigment_network": ("absent", "typical", "atypical"),
    "blue_whitish_veil": ("absent", "present"),
    "vascular_structures": ("absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"),
    "pigmentation": ("absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"),
    "streaks": ("absent", "regular", "irregular"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations"),
}
#: patient metadata given to a model; management and level_of_diagnostic_difficulty are NOT
#: here on purpose (label-derived). Value order = the shared npz's `metadata_coding`.
METADATA: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "elevation": ("flat", "palpable", "nodular"),
    "location": ("abdomen", "acral", "back", "buttocks", "chest", "genital areas", "head neck", "lower limbs",
                 "upper limbs"),
}
MISSING = -1
#: fields of the release that carry the label; never read into any array a strategy sees
LABEL_DERIVED = ("management", "seven_point_score", "level_of_diagnostic_difficulty", "diagnosis", "melanoma")
LAYOUTS = ("auto", "shared", "official")
OPTIONS = {"layout": "auto"}

KNOWLEDGE_SOURCE = (
    "attributes: the 7-point checklist criteria (Argenziano et al. 1998) scored per case by expert "
    "dermatologists in the Derm7pt release (Kawahara et al. 2019); metadata: sex, lesion elevation and body "
    "location as recorded in the release; views: the clinical photograph of the same lesion"
)
WARNINGS = (
    ("attributes are the expert-scored 7-point criteria, strongly associated with the diagnosis (that is the "
     "checklist's point): use them as auxiliary training targets only, never as a test-time input."),
    ("management, seven_point_score, level_of_diagnostic_difficulty, diagnosis and melanoma are label-derived "
     "and are not read (seven_point_score is exactly the weighted sum of the criteria)."),
    ("images are the release's 768x512 photographs resized to a square with Lanczos (aspect 3:2 squashed; "
     "Kawahara's 25-px border crop is not applied)."),
)


def coding(name: str, values: tuple[str, ...]) -> str:
    """'name: 0=a, 1=b, …', the form of the shared npz's `*_coding` strings."""
    return f"{name}: " + ", ".join(f"{i}={v}" for i, v in enumerate(values))


@dataclass
class _Cases:
    """Every case of the release, in meta.csv order: what both layouts reduce to."""

    derm: np.ndarray  # (N, S, S, 3) uint8
    clinic: np.ndarray | None  # (N, S, S, 3) uint8, None when views are not provided
    ids: np.ndarray  # (N,) str: dermoscopic file stem
    labels: np.ndarray  # (N,) int64 in CLASS_NAMES order
    criteria: np.ndarray  # (N, 7) int64 in CRITERIA order, MISSING when not scored
    metadata: dict[str, np.ndarray]  # METADATA name → (N,) int64 codes, MISSING when absent
    split: np.ndarray  # (N,) int64: index into SPLITS, -1 for a row in no split
    clinic_is_derm: np.ndarray  # (N,) bool: the clinical photo is missing, the dermoscopic one reused
    checksum: str
    files: list[str]


# --- options and files ---------------------------------------------------------------------


def _options(name: str, options: dict) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise RunConfigError(f"dataset '{name}': unknown option(s) {sorted(unknown)}; valid options: {sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if opts["layout"] not in LAYOUTS:
        raise RunConfigError(f"dataset '{name}': option layout={opts['layout']!r} is not one of {list(LAYOUTS)} "
                             f"(auto: the shared .npz when present, else the official release_v0 folder)")
    return opts


def _layout(data_dir: Path, layout: str) -> str:
    """auto → shared when its npz is there, else official when meta.csv is, else shared (whose
    missing-file message also says how to use the official release)."""
    if layout != "auto":
        return layout
    if (data_dir / SHARED_FILE).is_file() or not (data_dir / META_FILE).is_file():
        return "shared"
    return "official"


def _wants_views(spec: DatasetSpec | None) -> bool:
    return spec is None or "views" in spec.provides


@data_files("derm7pt")
def derm7pt_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    data_dir = Path(data_dir)
    opts = _options(spec.name if spec else "derm7pt", dict(options))
    if _layout(data_dir, opts["layout"]) == "shared":
        needs = [(data_dir / SHARED_FILE, "Derm7pt file derm7pt/derm7pt_128.npz", HOW_SHARED)]
        if _wants_views(spec):
            what = "Derm7pt clinical-view file derm7pt/derm7pt_clinic_128.npz (needed for the `views` extra)"
            needs.append((data_dir / SHARED_CLINIC_FILE, what, HOW_SHARED))
        return needs
    tables = [(data_dir / META_FILE, "Derm7pt table release_v0/meta/meta.csv", HOW_OFFICIAL)]
    tables += [(data_dir / path, f"Derm7pt official {split} indexes release_v0/meta/{path.name}", HOW_OFFICIAL)
               for split, path in INDEX_FILES.items()]
    if not all(path.is_file() for path, _, _ in tables):
        return tables
    # the tables are there: name the first missing image before anything runs
    columns = ("derm", "clinic") if _wants_views(spec) else ("derm",)
    rows = _meta_rows(data_dir / META_FILE, columns)
    return tables + [_image_need(data_dir, row, col) for row in rows for col in columns]


def _image_need(data_dir: Path, row: dict[str, str], column: str) -> tuple[Path, str, str]:
    case = row.get("case_num", "?")
    what = f"Derm7pt image release_v0/images/{row[column]} (meta.csv column {column}, case_num {case})"
    return data_dir / IMAGES_DIR / row[column], what, HOW_OFFICIAL


# --- official layout -----------------------------------------------------------------------


def _meta_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a BOM from a spreadsheet re-save
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise InvalidDataError(f"{path}: not a UTF-8 CSV table ({err}); use the release_v0 meta.csv from {URL}") from None
    if missing:
        raise InvalidDataError(f"{path}: lacks the column(s) {missing}; expected the release_v0 meta.csv "
                               f"(columns case_num, diagnosis, the seven criteria, elevation, location, sex, "
                               f"clinic, derm, …) from {URL}")
    if not rows:
        raise InvalidDataError(f"{path}: no cases; expected the release_v0 meta.csv from {URL}")
    return rows


def _code(path: Path, rows: list[dict[str, str]], column: str, values: dict[str, int], *,
          missing_ok: bool) -> np.ndarray:
    """A meta.csv column → int64 codes; an empty cell → MISSING (if allowed), an unknown value → error."""
    codes = np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        value = row[column]
        if value == "" and missing_ok:
            codes[i] = MISSING
        elif value in values:
            codes[i] = values[value]
        else:
            raise InvalidDataError(
                f"{path}: row {i} (case_num {row.get('case_num', '?')}) has {column}={value!r}, not one of "
                f"{sorted(values)}; fix the cell or use the unmodified release_v0 meta.csv from {URL}")
    return codes


def _read_split(data_dir: Path, n: int) -> np.ndarray:
    """(n,) split of every meta.csv row from the three official index files."""
    split = np.full(n, -1, np.int64)
    for s, rel in enumerate(INDEX_FILES.values()):
        path = data_dir / rel
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "indexes" not in (reader.fieldnames or []):
                raise InvalidDataError(f"{path}: lacks the column 'indexes'; expected the release_v0 index file "
                                       f"(a header line `indexes`, then one 0-based meta.csv row per line)")
            try:
                rows = [int(r["indexes"]) for r in reader]
            except (TypeError, ValueError) as err:
                raise InvalidDataError(f"{path}: an index is not an integer ({err}); expected 0-based meta.csv "
                                       f"rows, one per line") from None
        for i in rows:
            if not 0 <= i < n:
                raise InvalidDataError(f"{path}: index {i} is outside meta.csv's {n} rows (0..{n - 1}); use the "
                                       f"index files that came with this meta.csv")
            if split[i] != -1:
                raise InvalidDataError(f"{path}: meta.csv row {i} is already in split {SPLITS[split[i]]}; the "
                                       f"official index files are disjoint: use them unmodified")
            split[i] = s
    return split


def _read_official(data_dir: Path, spec: DatasetSpec, views: bool) -> _Cases:
    meta = data_dir / META_FILE
    rows = _meta_rows(meta, ("diagnosis", "derm", "clinic", *CRITERIA, *METADATA))
    digest = hashlib.sha256()
    for rel in (META_FILE, *INDEX_FILES.values()):
        digest.update(bytes.fromhex(sha256_file(data_dir / rel)))

    def image(rel: str) -> np.ndarray:
        path = data_dir / IMAGES_DIR / rel
        digest.update(bytes.fromhex(sha256_file(path)))
        try:
            return read_image(path, spec.size)
        except OSError as err:  # PIL.UnidentifiedImageError is an OSError
            raise InvalidDataError(f"{path}: cannot be read as an image ({err}); download it again from "
                                   f"{URL}") from None

    derm = np.stack([image(r["derm"]) for r in rows])
    clinic = np.stack([image(r["clinic"]) for r in rows]) if views else None
    return _Cases(
        derm=derm,
        clinic=clinic,
        ids=np.array([Path(r["derm"]).stem for r in rows]),
        labels=_code(meta, rows, "diagnosis", CLASS_OF, missing_ok=False),
        criteria=np.stack([_code(meta, rows, c, {v: i for i, v in enumerate(vals)}, missing_ok=True)
                           for c, vals in CRITERIA.items()], axis=1),
        metadata={m: _code(meta, rows, m, {v: i for i, v in enumerate(vals)}, missing_ok=True)
                  for m, vals in METADATA.items()},
        split=_read_split(data_dir, len(rows)),
        clinic_is_derm=np.array([r["clinic"] == r["derm"] for r in rows]),
        checksum=digest.hexdigest(),
        files=[str(META_FILE), *(str(p) for p in INDEX_FILES.values()), f"{IMAGES_DIR}/<derm{', clinic' * views}>"],
    )


# --- shared layout -------------------------------------------------------------------------

#: the shared npz's split coding (its `split_names`)
SHARED_SPLIT_NAMES = ("train", "valid", "test")
SHARED_KEYS = ("images", "ids", "case_num", "labels", "label_names", "criteria", "criteria_names", "criteria_coding",
               "metadata", "metadata_names", "metadata_coding", "split", "split_names", "clinic_is_derm")


def _check_coding(path: Path, what: str, got, expected: list[str]) -> None:
    if [str(x) for x in got] != expected:
        raise InvalidDataError(f"{path}: {what} is {[str(x) for x in got]}, expected {expected}; the file differs "
                               f"from the one derm7pt/README.md describes: rebuild or re-copy it")


def _read_shared(data_dir: Path, spec: DatasetSpec, views: bool) -> _Cases:
    path = data_dir / SHARED_FILE
    with np.load(path, allow_pickle=False) as z:
        lacking = sorted(set(SHARED_KEYS) - set(z.files))
        if lacking:
            raise InvalidDataError(f"{path}: lacks arrays {lacking}; expected the file described in derm7pt/README.md")
        # only the keys a strategy may see (and those that check them): never management & co.
        a = {k: z[k] for k in SHARED_KEYS}
    if a["images"].ndim != 4 or a["images"].shape[1:] != (SHARED_SIZE, SHARED_SIZE, 3) or a["images"].dtype != np.uint8:
        raise InvalidDataError(f"{path}: images have shape {a['images'].shape} dtype {a['images'].dtype}; expected "
                               f"(N, {SHARED_SIZE}, {SHARED_SIZE}, 3) uint8")
    if spec.size != SHARED_SIZE:
        raise InvalidDataError(f"dataset '{spec.name}': {path} holds {SHARED_SIZE}x{SHARED_SIZE} images but the config "
                               f"says size {spec.size}; keep size {SHARED_SIZE} and set dataset.resize, or read the "
                               f"official release at any size (dataset.options.layout=official)")
    _check_coding(path, "label_names", a["label_names"], list(CLASS_NAMES))
    _check_coding(path, "criteria_names", a["criteria_names"], list(CRITERIA))
    _check_coding(path, "criteria_coding", a["criteria_coding"], [coding(k, v) for k, v in CRITERIA.items()])
    _check_coding(path, "split_names", a["split_names"], list(SHARED_SPLIT_NAMES))
    names = [str(x) for x in a["metadata_names"]]
    if not set(METADATA) <= set(names):
        raise InvalidDataError(f"{path}: metadata_names {names} lack {sorted(set(METADATA) - set(names))}")
    column = {m: names.index(m) for m in METADATA}
    _check_coding(path, "metadata_coding of sex, elevation, location",
                  [a["metadata_coding"][column[m]] for m in METADATA], [coding(k, v) for k, v in METADATA.items()])
    digest = hashlib.sha256(bytes.fromhex(sha256_file(path)))
    files = [str(SHARED_FILE)]
    clinic = None
    if views:
        clinic = _read_shared_clinic(data_dir, a)
        digest.update(bytes.fromhex(sha256_file(data_dir / SHARED_CLINIC_FILE)))
        files.append(str(SHARED_CLINIC_FILE))
    return _Cases(
        derm=a["images"],
        clinic=clinic,
        ids=a["ids"].astype(str),
        labels=a["labels"].astype(np.int64),
        criteria=a["criteria"].astype(np.int64),
        metadata={m: a["metadata"][:, column[m]].astype(np.int64) for m in METADATA},
        split=a["split"].astype(np.int64),  # train/valid/test = 0/1/2, the order of SPLITS
        clinic_is_derm=a["clinic_is_derm"].astype(bool),
        checksum=digest.hexdigest(),
        files=files,
    )


def _read_shared_clinic(data_dir: Path, derm: dict[str, np.ndarray]) -> np.ndarray:
    path = data_dir / SHARED_CLINIC_FILE
    with np.load(path, allow_pickle=False) as z:
        lacking = sorted({"images", "ids", "case_num"} - set(z.files))
        if lacking:
            raise InvalidDataError(f"{path}: lacks arrays {lacking}; expected the file described in derm7pt/README.md")
        images, ids, case_num = z["images"], z["ids"], z["case_num"]
    # the two files must hold the same cases in the same rows, or view 1 shows another lesion
    if images.shape != derm["images"].shape or not (np.array_equal(ids, derm["ids"])
                                                      and np.array_equal(case_num, derm["case_num"])):
        raise InvalidDataError(f"{path}: its rows (ids, case_num, image shape {images.shape}) do not match "
                               f"{data_dir / SHARED_FILE}; use the two files of one build (derm7pt/README.md)")
    return images


# --- both layouts --------------------------------------------------------------------------


def _check_spec(spec: DatasetSpec) -> None:
    given = (spec.task, spec.num_classes, spec.in_chans, spec.spatial_dims)
    if given != ("multiclass", len(CLASS_NAMES), 3, 2):
        raise RunConfigError(f"dataset '{spec.name}': the derm7pt reader gives multiclass, num_classes "
                             f"{len(CLASS_NAMES)} {list(CLASS_NAMES)}, in_chans 3, spatial_dims 2; the config says "
                             f"{spec.task}, {spec.num_classes}, {spec.in_chans}, {spec.spatial_dims}")


def _check(cases: _Cases, where: str) -> None:
    n = len(cases.ids)
    if len(np.unique(cases.ids)) != n:
        raise InvalidDataError(f"{where}: dermoscopic file stems (the ids) repeat; expected one file per case")
    if cases.labels.min() < 0 or cases.labels.max() >= len(CLASS_NAMES):
        raise InvalidDataError(f"{where}: labels outside 0..{len(CLASS_NAMES) - 1} ({list(CLASS_NAMES)})")
    if cases.split.min() < -1 or cases.split.max() >= len(SPLITS):
        raise InvalidDataError(f"{where}: split codes outside 0..{len(SPLITS) - 1} (train, valid, test)")
    for j, (name, values) in enumerate(CRITERIA.items()):
        if cases.criteria[:, j].max() >= len(values) or cases.criteria[:, j].min() < MISSING:
            raise InvalidDataError(f"{where}: criterion {name} has codes outside {MISSING}..{len(values) - 1}")


def _assemble(cases: _Cases, spec: DatasetSpec, layout: str) -> DatasetArrays:
    where = f"dataset '{spec.name}' ({layout} layout: {', '.join(cases.files)})"
    _check(cases, where)
    extras: dict[str, np.ndarray] = {}
    metadata_names: list[str] = []
    if "attributes" in spec.provides:
        extras["attributes"] = cases.criteria
    if "metadata" in spec.provides:
        extras["metadata"], metadata_names = encode_metadata(
            [Column(m, cases.metadata[m], METADATA[m]) for m in METADATA])
    image = np.ascontiguousarray(cases.derm.transpose(0, 3, 1, 2))  # (N, 3, H, W)
    if "views" in spec.provides:
        assert cases.clinic is not None
        extras["views"] = np.stack([image, np.ascontiguousarray(cases.clinic.transpose(0, 3, 1, 2))], axis=1)

    splits = {}
    for s, split in enumerate(SPLITS):
        idx = np.flatnonzero(cases.split == s)  # meta.csv order within a split, in both layouts
        splits[split] = SplitArrays(image=image[idx], label=cases.labels[idx], ids=cases.ids[idx],
                                    extras={k: v[idx] for k, v in extras.items()})
    return DatasetArrays(spec=spec, splits=splits, checksum=cases.checksum,
                         notes=_notes(cases, spec, layout, metadata_names))


def _notes(cases: _Cases, spec: DatasetSpec, layout: str, metadata_names: list[str]) -> dict[str, object]:
    warnings = list(WARNINGS)
    unsplit = int((cases.split < 0).sum())
    if unsplit:
        warnings.append(f"{unsplit} meta.csv row(s) are in none of the official index files and are left out.")
    notes: dict[str, object] = {
        "layout": layout,
        "data_files": list(cases.files),
        "split_method": "official (release_v0 meta/train_indexes.csv, valid_indexes.csv, test_indexes.csv; "
                        "Kawahara et al. 2019); no saved split file",
        "split_sizes": {split: int((cases.split == s).sum()) for s, split in enumerate(SPLITS)},
        "order": "meta.csv row order within each split; ids = dermoscopic file stems",
        "class_names": list(CLASS_NAMES),
        "class_grouping": {cls: list(names) for cls, names in DIAGNOSIS_GROUPS.items()},
        "knowledge_source": KNOWLEDGE_SOURCE,
        "label_derived": list(LABEL_DERIVED),
        "warnings": warnings,
    }
    if "attributes" in spec.provides:
        notes["attribute_names"] = list(CRITERIA)
        notes["attribute_values"] = {k: list(v) for k, v in CRITERIA.items()}
        notes["attribute_coding"] = [coding(k, v) for k, v in CRITERIA.items()]
        notes["attribute_missing_value"] = MISSING
    if "metadata" in spec.provides:
        notes["metadata_names"] = metadata_names  # what metadata_fusion reads
        notes["metadata_columns"] = metadata_names
        notes["metadata_coding"] = [coding(k, v) for k, v in METADATA.items()]
    if "views" in spec.provides:
        replaced = cases.ids[cases.clinic_is_derm].tolist()
        notes["views"] = "view 0 = the dermoscopic image (= image); view 1 = the clinical photograph"
        notes["views_clinic_replaced_by_derm"] = replaced
        if replaced:
            warnings.append(f"{len(replaced)} case(s) have no clinical photograph: the release reuses the "
                            f"dermoscopic file as their clinic image, so view 1 = view 0 there ({replaced}).")
    return notes


@register_dataset("derm7pt")
def read_derm7pt(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """Derm7pt, 5 classes (BCC, NEV, MEL, MISC, SK) on the dermoscopic image, official split.
    Option `layout`: auto (default) | shared | official (module docstring)."""
    data_dir = Path(data_dir)
    layout = _layout(data_dir, _options(spec.name, options)["layout"])
    _check_spec(spec)
    check_data_files("derm7pt", data_dir, spec, {"layout": layout})
    views = "views" in spec.provides
    cases = _read_shared(data_dir, spec, views) if layout == "shared" else _read_official(data_dir, spec, views)
    return _assemble(cases, spec, layout)

