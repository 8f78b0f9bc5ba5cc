"""PH² dermoscopy (Mendonça, Ferreira, Marques, Marçal, Rozeira, "PH² – A dermoscopic image
database for research and benchmarking", IEEE EMBC 2013, pp. 5437–5440,
doi:10.1109/EMBC.2013.6610779): 200 dermoscopic images of melanocytic lesions from Hospital Pedro
Hispano (80 common nevi, 80 atypical nevi, 40 melanomas), each with a manual lesion segmentation
and an expert dermatologist's assessment of the dermoscopic criteria.

Task: the clinical diagnosis (0 common_nevus, 1 atypical_nevus, 2 melanoma), RGB at `spec.size`,
split by the committed `dkbench/data/splits/ph2.json` (IMD199 / IMD200, one lesion photographed
twice, kept on one side). Extras: `mask` (the lesion segmentation), `bbox` (its box) and
`attributes`, the expert criteria (`CRITERIA`, coded as in `CODES`) followed, unless
`include_colors: false`, by the six colour flags (`COLORS`, 0 absent / 1 present).

Two layouts (option `layout`, default `auto` = the shared file when present, else the release):

- `shared`: `<data_dir>/ph2/ph2_128.npz`, the compact file described in its README.md;
- `official`: the PH² release as its authors distribute it, under `<data_dir>/ph2/` (or the
  `PH2Dataset/` folder the archive unpacks to, inside it)::

      PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp
      PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
      PH2_dataset.xlsx   (sheet "Folha1": legend block, then the header row "Image Name", ...)
      PH2_dataset.txt    (the same table as `||`-separated text; read when the .xlsx is absent)

Both give the same arrays for the same images: rows sorted by image id, images read with
`tabular.read_image`, masks with `tabular.read_mask` (the rules the shared file was built with).

The histological diagnosis (`histology`) is label-derived: filled almost only for atypical nevi
and melanomas, it names the diagnosis. It is never returned. The criteria are scored by the
clinicians who made the diagnosis: pigment_network = atypical in 0/80 common nevi but 116/120
other lesions, so it is an auxiliary TARGET (attribute_multitask), never a model input.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

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
from dkbench.data.tabular import read_image, read_mask
from dkbench.errors import InvalidDataError, RunConfigError

FOLDER = Path("ph2")
SHARED_FILE = FOLDER / "ph2_128.npz"
IMAGES_DIR = "PH2 Dataset images"
XLSX, TXT = "PH2_dataset.xlsx", "PH2_dataset.txt"
#: the folder the release archive unpacks to; accepted inside <data_dir>/ph2/ as well
ARCHIVE_FOLDER = "PH2Dataset"

CLASS_NAMES = ("common_nevus", "atypical_nevus", "melanoma")
CRITERIA = ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil")
COLORS = ("white", "red", "light_brown", "dark_brown", "blue_gray", "black")
_PRESENCE = {"A": 0, "P": 1}
_TYPICALITY = {"A": 0, "T": 1, "AT": 2}
#: table letter → code, per criterion (the table's legend; the shared file uses the same codes)
CODES: dict[str, dict[str, int]] = {
    "asymmetry": {"0": 0, "1": 1, "2": 2},
    "pigment_network": _TYPICALITY,
    "dots_globules": _TYPICALITY,
    "streaks": _PRESENCE,
    "regression_areas": _PRESENCE,
    "blue_whitish_veil": _PRESENCE,
}
CODE_NAMES = {
    "asymmetry": ["fully symmetric", "symmetric in one axis", "fully asymmetric"],
    "pigment_network": ["absent (A)", "typical (T)", "atypical (AT)"],
    "dots_globules": ["absent (A)", "typical (T)", "atypical (AT)"],
    "streaks": ["absent (A)", "present (P)"],
    "regression_areas": ["absent (A)", "present (P)"],
    "blue_whitish_veil": ["absent (A)", "present (P)"],
    **{c: ["absent", "present"] for c in COLORS},
}
MISSING = -1  # an empty criterion cell (none in the release)
LAYOUTS = ("auto", "shared", "official")
OPTIONS = {"layout": "auto", "include_colors": True}

OFFICIAL_URL = "https://www.fc.up.pt/addi/ph2%20database.html"
HOW_OFFICIAL = (
    f"download the PH² database from {OFFICIAL_URL} (Mendonça et al., EMBC 2013; research and "
    f"benchmarking use) and unpack it so that <data_dir>/ph2/ holds '{IMAGES_DIR}/' and {XLSX} "
    f"(or {TXT}); dataset.options.layout=official reads it."
)
HOW_SHARED = (
    "copy ph2/ph2_128.npz from the project's shared dataset folder (../shared/datasets, see "
    "ph2/README.md for how it was built), or " + HOW_OFFICIAL
)
LEAK_WARNING = (
    "PH² attributes are the clinicians' own dermoscopic scoring and nearly determine the label "
    "(pigment_network atypical: 0/80 common nevi vs 116/120 others; regression and blue-whitish "
    "veil absent in all common nevi): auxiliary training targets only, never a model input. The "
    "histological diagnosis is label-derived and is not returned."
)


@dataclass(frozen=True)
class Table:
    """The PH² annotation table, one row per image, sorted by id."""

    ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int64, CLASS_NAMES order
    criteria: np.ndarray  # (N, 6) int64, CODES, MISSING when empty
    colors: np.ndarray  # (N, 6) int64 in {0, 1}
    #: (N,) str, '' when not given; label-derived: never returned (None when read from the shared file)
    histology: np.ndarray | None


@dataclass(frozen=True)
class Raw:
    """What either layout yields before splitting (rows in any order; `_assemble` sorts)."""

    table: Table
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8 {0, 1}
    checksum: str
    source: str  # the file read (shared) or the table (official), relative to data_dir


# --- options and layout -----------------------------------------------------------------
def _options(name: str, options: Mapping) -> dict:
    """The options with defaults, refused with the valid ones when unknown or ill-typed."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise RunConfigError(f"dataset '{name}': unknown option(s) {sorted(unknown)}; valid options: {sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if opts["layout"] not in LAYOUTS:
        raise RunConfigError(f"dataset '{name}': option layout={opts['layout']!r}; valid layouts: {list(LAYOUTS)}")
    if not isinstance(opts["include_colors"], (bool, np.bool_)):
        raise RunConfigError(f"dataset '{name}': option include_colors must be true or false, "
                             f"got {opts['include_colors']!r}")
    return opts


def official_root(data_dir: Path) -> Path:
    """`<data_dir>/ph2`, or its `PH2Dataset/` subfolder when the archive was unpacked into it."""
    root = Path(data_dir) / FOLDER
    nested = root / ARCHIVE_FOLDER
    if not _table_in(root) and _table_in(nested):
        return nested
    return root


def _table_in(root: Path) -> Path | None:
    """The release's table in `root`: the .xlsx (the complete original), else the .txt."""
    for name in (XLSX, TXT):
        if (root / name).is_file():
            return root / name
    return None


def _layout(data_dir: Path, layout: str) -> str:
    """`auto` → shared when its file is there, official when the release's table is, else
    shared (so that the missing-file message names the shared file and both ways to get data)."""
    if layout != "auto":
        return layout
    if (Path(data_dir) / SHARED_FILE).is_file() or not _table_in(official_root(data_dir)):
        return "shared"
    return "official"


def image_paths(root: Path, image_id: str) -> tuple[Path, Path]:
    """The release's dermoscopic image and lesion mask of one id."""
    case = root / IMAGES_DIR / image_id
    return case / f"{image_id}_Dermoscopic_Image" / f"{image_id}.bmp", case / f"{image_id}_lesion" / f"{image_id}_lesion.bmp"


@data_files("ph2")
def ph2_files(data_dir: Path, spec: DatasetSpec | None, options: Mapping) -> list:
    """The shared file, or the release's table and (once the table is readable) every image and
    mask it lists: a missing BMP is refused before training, not after 150 images were read."""
    opts = _options(spec.name if spec else "ph2", options)
    if _layout(data_dir, opts["layout"]) == "shared":
        return [(Path(data_dir) / SHARED_FILE, "PH² file ph2/ph2_128.npz", HOW_SHARED)]
    root = official_root(data_dir)
    table = _table_in(root)
    if table is None:
        return [(root / XLSX, f"PH² annotation table {XLSX} (or {TXT})", HOW_OFFICIAL)]
    needs = [(table, f"PH² annotation table {table.name}", HOW_OFFICIAL)]
    for image_id in read_table(table).ids:
        image, mask = image_paths(root, str(image_id))
        needs += [(image, f"PH² image of {image_id}", HOW_OFFICIAL), (mask, f"PH² lesion mask of {image_id}", HOW_OFFICIAL)]
    return needs


# --- the annotation table ---------------------------------------------------------------
_ID = re.compile(r"^IMD\d+$")
_XML_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
           "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
           "rel": "http://schemas.openxmlformats.org/package/2006/relationships"}
#: header cell (first line, lower case) → field; the .xlsx header row starts with "Image Name"
_XLSX_HEADERS = {
    "image name": "id", "histological diagnosis": "histology",
    "common nevus": CLASS_NAMES[0], "atypical nevus": CLASS_NAMES[1], "melanoma": CLASS_NAMES[2],
    "asymmetry": "asymmetry", "pigment network": "pigment_network", "dots/globules": "dots_globules",
    "streaks": "streaks", "regression areas": "regression_areas", "blue-whitish veil": "blue_whitish_veil",
    "white": "white", "red": "red", "light-brown": "light_brown", "dark-brown": "dark_brown",
    "blue-gray": "blue_gray", "black": "black",
}


def read_table(path: Path | str) -> Table:
    """The release's annotation table (.xlsx or .txt) as arrays sorted by image id."""
    path = Path(path)
    rows = _xlsx_rows(path) if path.suffix.lower() == ".xlsx" else _txt_rows(path)
    if not rows:
        raise InvalidDataError(f"{path}: no image rows (IMDxxx) found; expected the PH² table from {OFFICIAL_URL}")
    rows.sort(key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise InvalidDataError(f"{path}: image ids listed twice: {duplicated[:5]}; keep one row per image")
    return Table(
        ids=np.array(ids, dtype=str),
        labels=np.array([r["label"] for r in rows], dtype=np.int64),
        criteria=np.array([[r[c] for c in CRITERIA] for r in rows], dtype=np.int64).reshape(-1, len(CRITERIA)),
        colors=np.array([[r[c] for c in COLORS] for r in rows], dtype=np.int64).reshape(-1, len(COLORS)),
        histology=np.array([r["histology"] for r in rows], dtype=str),
    )


def _code(path: Path, image_id: str, criterion: str, value: str) -> int:
    """A criterion's letter (or asymmetry digit) → its code; empty → MISSING; else refused."""
    value = value.strip().upper().removesuffix(".0")  # a spreadsheet may store the digit as a float
    if not value:
        return MISSING
    if value not in CODES[criterion]:
        raise InvalidDataError(f"{path}: {image_id} has {criterion}={value!r}; the PH² legend allows "
                               f"{sorted(CODES[criterion])} (fix the cell or use the original table from {OFFICIAL_URL})")
    return CODES[criterion][value]


def _xlsx_rows(path: Path) -> list[dict]:
    """The .xlsx's rows below the header row "Image Name" (legend rows above it are skipped):
    one-hot diagnosis columns and colour columns are marked "X"; criteria are letters."""
    grid = xlsx_cells(path)
    header_row = next((r for r, cells in sorted(grid.items())
                       if any(v.strip().lower() == "image name" for v in cells.values())), None)
    if header_row is None:
        raise InvalidDataError(f"{path}: no header row with an 'Image Name' cell; expected the PH² table from {OFFICIAL_URL}")
    column = {}
    for col, text in grid[header_row].items():
        key = _XLSX_HEADERS.get(text.split("\n")[0].strip().lower())
        if key:
            column[key] = col
    missing = [h for h, k in _XLSX_HEADERS.items() if k not in column]
    if missing:
        raise InvalidDataError(f"{path}: header row {header_row} lacks the columns {missing}; expected the PH² table "
                               f"from {OFFICIAL_URL}")
    rows = []
    for r in sorted(r for r in grid if r > header_row):
        cells = grid[r]
        image_id = cells.get(column["id"], "").strip()
        if not _ID.match(image_id):
            continue  # blank or note rows
        marked = [i for i, c in enumerate(CLASS_NAMES) if _mark(path, image_id, c, cells.get(column[c], ""))]
        if len(marked) != 1:
            raise InvalidDataError(f"{path}: {image_id} has {len(marked)} clinical diagnosis columns marked "
                                   f"(Common Nevus / Atypical Nevus / Melanoma); exactly one must hold 'X'")
        row = {"id": image_id, "label": marked[0], "histology": cells.get(column["histology"], "").strip()}
        row.update({c: _code(path, image_id, c, cells.get(column[c], "")) for c in CRITERIA})
        row.update({c: int(_mark(path, image_id, c, cells.get(column[c], ""))) for c in COLORS})
        rows.append(row)
    return rows


def _mark(path: Path, image_id: str, field: str, value: str) -> bool:
    """An "X" cell is set, an empty one is not; anything else is refused."""
    value = value.strip().upper()
    if value not in ("", "X"):
        raise InvalidDataError(f"{path}: {image_id} has {field}={value!r}; the PH² table marks with 'X' or leaves empty")
    return value == "X"


def xlsx_cells(path: Path | str) -> dict[int, dict[str, str]]:
    """The first worksheet of an .xlsx as {row number: {column letters: text}}, read with the
    standard library (zipfile + xml.etree; no openpyxl): shared strings resolved, inline strings
    and numbers kept as their text, empty cells absent."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            strings = _shared_strings(z)
            sheet = ElementTree.fromstring(z.read(_first_sheet(z)))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as err:
        raise InvalidDataError(f"{path}: not a readable .xlsx workbook ({err}); re-download the PH² table from "
                               f"{OFFICIAL_URL} or use {TXT}") from err
    grid: dict[int, dict[str, str]] = {}
    for n, row in enumerate(sheet.iter(f"{{{_XML_NS['m']}}}row"), start=1):
        r = int(row.get("r", n))
        cells, previous = {}, 0
        for cell in row.findall("m:c", _XML_NS):
            col = re.sub(r"\d", "", cell.get("r", "")) or _column_letters(previous + 1)
            previous = _column_number(col)
            text = _cell_text(cell, strings)
            if text:
                cells[col] = text
        if cells:
            grid[r] = cells
    return grid


def _first_sheet(z: zipfile.ZipFile) -> str:
    """Member name of the workbook's first sheet (PH²: "Folha1"), via the workbook's relations."""
    workbook = ElementTree.fromstring(z.read("xl/workbook.xml"))
    sheet = workbook.find("m:sheets/m:sheet", _XML_NS)
    rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
    rid = sheet.get(f"{{{_XML_NS['r']}}}id") if sheet is not None else None
    for rel in rels.findall("rel:Relationship", _XML_NS):
        if rel.get("Id") == rid:
            target = rel.get("Target", "")
            return target.lstrip("/") if target.startswith("/") else f"xl/{target}"
    return "xl/worksheets/sheet1.xml"


def _shared_strings(z: zipfile.ZipFile) -> list[str]:
    if "xl/sharedStrings.xml" not in z.namelist():
        return []
    root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
    return [_string_item(si) for si in root.findall("m:si", _XML_NS)]


def _string_item(item: ElementTree.Element) -> str:
    """Text of an <si>/<is>: a plain <t> or rich-text runs <r><t> (phonetic runs left out)."""
    return "".join(t.text or "" for t in [*item.findall("m:t", _XML_NS), *item.findall("m:r/m:t", _XML_NS)])


def _cell_text(cell: ElementTree.Element, strings: list[str]) -> str:
    kind = cell.get("t")
    if kind == "inlineStr":
        item = cell.find("m:is", _XML_NS)
        return _string_item(item) if item is not None else ""
    value = cell.find("m:v", _XML_NS)
    if value is None or value.text is None:
        return ""
    return strings[int(value.text)] if kind == "s" else value.text


def _column_number(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n


def _column_letters(n: int) -> str:
    letters = ""
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _txt_rows(path: Path) -> list[dict]:
    """The .txt: `|| Name || Histological Diagnosis || Clinical Diagnosis (0/1/2) || Asymmetry |
    Pigment Network | Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil || Colors ||`
    with colours as codes 1..6 (COLORS order) separated by spaces. Header and legend lines are
    skipped; an empty histology field keeps its place (fields are split on `||`, not on blanks)."""
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines():
        fields = [f.strip() for f in line.strip().split("||")]
        if len(fields) < 2 or not _ID.match(fields[1]):
            continue
        image_id = fields[1]
        if len(fields) < 6:
            raise InvalidDataError(f"{path}: the line of {image_id} has {len(fields) - 2} '||' fields; expected 5 "
                                   f"(name, histology, clinical diagnosis, criteria, colours)")
        histology, diagnosis, criteria, colours = fields[2:6]
        if diagnosis not in ("0", "1", "2"):
            raise InvalidDataError(f"{path}: {image_id} has clinical diagnosis {diagnosis!r}; expected 0 (common "
                                   f"nevus), 1 (atypical nevus) or 2 (melanoma)")
        values = [v.strip() for v in criteria.split("|")]
        if len(values) != len(CRITERIA):
            raise InvalidDataError(f"{path}: {image_id} has {len(values)} '|'-separated criteria; expected "
                                   f"{len(CRITERIA)} ({', '.join(CRITERIA)})")
        codes = re.sub(r"\s", "", colours)
        if not set(codes) <= set("123456"):
            raise InvalidDataError(f"{path}: {image_id} has colours {colours!r}; expected codes 1-6 "
                                   f"({', '.join(COLORS)}) separated by spaces")
        row = {"id": image_id, "label": int(diagnosis), "histology": histology}
        row.update({c: _code(path, image_id, c, v) for c, v in zip(CRITERIA, values)})
        row.update({c: int(str(k) in codes) for k, c in enumerate(COLORS, start=1)})
        rows.append(row)
    return rows


# --- the two layouts --------------------------------------------------------------------
def _read_shared(data_dir: Path, spec: DatasetSpec) -> Raw:
    path = Path(data_dir) / SHARED_FILE
    keys = ("images", "masks", "labels", "ids", "attributes", "colors")
    with np.load(path, allow_pickle=False) as z:
        missing = set(keys) - set(z.files)
        if missing:
            raise InvalidDataError(f"{path}: lacks arrays {sorted(missing)}; expected the file described in ph2/README.md")
        a = {k: z[k] for k in keys}  # `histology` is never loaded: label-derived
    images = a["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidDataError(f"{path}: images have shape {images.shape} dtype {images.dtype}; expected (N, H, W, 3) uint8")
    if images.shape[1:3] != (spec.size, spec.size):
        raise InvalidDataError(f"dataset '{spec.name}': {path} holds {images.shape[1]}×{images.shape[2]} images but the "
                               f"config says size {spec.size}; use dataset.resize to train smaller, or layout=official")
    n = len(images)
    for key, shape in (("criteria", (n, len(CRITERIA))), ("colors", (n, len(COLORS)))):
        arr = a["attributes" if key == "criteria" else key]
        if arr.shape != shape:
            raise InvalidDataError(f"{path}: {key} have shape {arr.shape}; expected {shape} (ph2/README.md)")
    table = Table(ids=a["ids"].astype(str), labels=a["labels"].astype(np.int64), criteria=a["attributes"].astype(np.int64),
                  colors=a["colors"].astype(np.int64), histology=None)
    return Raw(table=table, images=images, masks=a["masks"], checksum=sha256_file(path), source=str(SHARED_FILE))


def _read_official(data_dir: Path, spec: DatasetSpec) -> Raw:
    """Every image and mask the table lists, read at `spec.size`; the checksum covers the table
    and each image and mask file (in id order), so caches keyed on it follow the bytes read."""
    root = official_root(data_dir)
    table_path = _table_in(root)  # present: `check_data_files` has checked every file named here
    table = read_table(table_path)
    digest = hashlib.sha256(sha256_file(table_path).encode())
    images, masks = [], []
    for image_id in table.ids.tolist():
        image_path, mask_path = image_paths(root, image_id)
        for path in (image_path, mask_path):
            digest.update(f"{path.relative_to(root)}:{sha256_file(path)}".encode())
        images.append(read_image(image_path, spec.size))
        masks.append(read_mask(mask_path, spec.size))
    return Raw(table=table, images=np.stack(images), masks=np.stack(masks), checksum=digest.hexdigest(),
               source=str(table_path.relative_to(Path(data_dir))))


# --- arrays → splits --------------------------------------------------------------------
def attribute_names(include_colors: bool) -> list[str]:
    return [*CRITERIA, *(COLORS if include_colors else ())]


def _check(raw: Raw, where: str) -> None:
    """Labels in 0..2, codes within the legend, binary colours and masks: one line naming the file."""
    t = raw.table
    if t.labels.shape != (len(raw.images),) or len(t.ids) != len(raw.images):
        raise InvalidDataError(f"{where}: {len(raw.images)} images but {len(t.labels)} labels and {len(t.ids)} ids")
    if t.labels.size and (t.labels.min() < 0 or t.labels.max() >= len(CLASS_NAMES)):
        raise InvalidDataError(f"{where}: labels must be 0..2 ({', '.join(CLASS_NAMES)})")
    for j, name in enumerate(CRITERIA):
        bad = (t.criteria[:, j] < MISSING) | (t.criteria[:, j] >= len(CODE_NAMES[name]))
        if bad.any():
            raise InvalidDataError(f"{where}: {name} holds codes outside -1..{len(CODE_NAMES[name]) - 1}")
    if not np.isin(t.colors, (0, 1)).all():
        raise InvalidDataError(f"{where}: colour flags must be 0 or 1")
    try:
        check_masks(raw.masks, raw.images, where)
    except ValueError as err:
        raise InvalidDataError(str(err)) from err


def _assemble(raw: Raw, spec: DatasetSpec, *, layout: str, include_colors: bool) -> DatasetArrays:
    _check(raw, raw.source)
    t = raw.table
    order = np.argsort(t.ids, kind="stable")  # the one order rule of both layouts: by image id
    ids, labels = t.ids[order], t.labels[order]
    images, masks = raw.images[order], raw.masks[order]
    attributes = np.concatenate([t.criteria, t.colors], axis=1) if include_colors else t.criteria
    attributes = attributes[order]
    doc = load_split("ph2")
    splits = {}
    for split, idx in split_indices(ids, doc, data_path=raw.source).items():
        mask = np.ascontiguousarray(masks[idx][:, None])  # (N, 1, H, W) uint8
        extras = {"mask": mask, "bbox": masks_to_bbox(mask), "attributes": np.ascontiguousarray(attributes[idx])}
        splits[split] = SplitArrays(
            image=np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2)),  # (N, 3, H, W) uint8
            label=labels[idx].astype(np.int64),
            ids=ids[idx],
            extras={k: v for k, v in extras.items() if k in spec.provides},
        )
    # the split's source checksum is the shared file's: comparing it with the release's would warn wrongly
    notes = split_notes(doc, raw.checksum if layout == "shared" else "")
    names = attribute_names(include_colors)
    notes.update({
        "data_layout": layout,
        "data_file": raw.source,
        "attribute_names": names,
        "attribute_coding": {n: CODE_NAMES[n] for n in names},
        "attribute_missing_value": MISSING,
        "knowledge_source": "expert dermatologist's assessment in the PH² table (Mendonça et al., EMBC 2013): "
                            "dermoscopic criteria" + (" and colours" if include_colors else "")
                            + "; manual lesion segmentation (mask, bbox)",
        "label_derived": ["histology"],
    })
    notes["warnings"].append(LEAK_WARNING)  # type: ignore[union-attr]
    return DatasetArrays(spec=spec, splits=splits, checksum=raw.checksum, notes=notes)


@register_dataset("ph2")
def read_ph2(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """PH², 3 classes (common_nevus, atypical_nevus, melanoma). Options: `layout` (auto | shared |
    official) and `include_colors` (default true: attributes = 6 criteria + 6 colour flags)."""
    opts = _options(spec.name, options)
    check_data_files("ph2", data_dir, spec, options)
    layout = _layout(data_dir, opts["layout"])
    raw = _read_shared(data_dir, spec) if layout == "shared" else _read_official(data_dir, spec)
    return _assemble(raw, spec, layout=layout, include_colors=bool(opts["include_colors"]))
