"""Generic image-folder reader: PNG / JPG files and a CSV table, described by the YAML alone.

Options (`dataset.options`; paths relative to paths.data_dir, or absolute)::

    csv: mydata/labels.csv            # one row per image
    image_dir: mydata/images          # default: the CSV's folder
    image_column: image               # file name or relative path; without an extension
                                      #   .png, .jpg, .jpeg are tried. The id = it without extension
    label_column: label               # class names (YAML class_names order) or indices; not
                                      #   read for segmentation (the mask is the label)
    mask_dir: mydata/masks            # optional: one mask per image → provides mask, bbox
    mask_pattern: "{id}.png"
    metadata: {age: numeric, sex: categorical}   # optional → provides metadata
    attributes: [asymmetry, network]  # optional: auxiliary targets → provides attributes
    split_column: split               # optional: train / val / test per row; else `split:`
    split: {ratios: [0.7, 0.15, 0.15], stratify: true, group_by: patient_id, seed: 0}

Images are read as grey (in_chans 1) or RGB (3) and resized to the YAML's `size` with Lanczos
(aspect ratio not kept), masks with `tabular.read_mask` (binary). Metadata is encoded by
`tabular.encode_metadata` (numeric: value + `<name>_missing`; categorical: one-hot over the
sorted values seen, all zero when missing). Attributes are integer codes ≥ 0 as written, or, for
text, codes of the sorted values seen; −1 = missing (what `attribute_multitask` ignores).

Columns listed under the YAML's `label_derived` are never read as metadata or attributes (they
are refused there), so they cannot reach a strategy.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dkbench.data.registry import check_data_files, data_files, register_dataset
from dkbench.data.saved_splits import masks_to_bbox, sha256_file
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays
from dkbench.data.tabular import Column, encode_metadata, read_mask
from dkbench.data.yaml_split import (
    Split,
    SplitSettings,
    configured_spec,
    make_or_load_split,
    refuse_label_derived,
    resolve_path,
    split_from_column,
)
from dkbench.errors import InvalidDataError, RunConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
METADATA_TYPES = ("numeric", "categorical")
#: cell spellings of "not recorded" (compared lower-case)
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "?"})
MISSING_CODE = -1
HOW = ("check the CSV's image / mask names against the files, or dataset.options.csv, image_dir, mask_dir and "
       "mask_pattern (see configs/dataset/example_folder.yaml)")


@dataclass(frozen=True)
class FolderOptions:
    """The reader's typed options (module docstring)."""

    csv: str
    image_dir: str | None = None
    image_column: str = "image"
    label_column: str | None = "label"
    mask_dir: str | None = None
    mask_pattern: str = "{id}.png"
    metadata: dict[str, str] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()
    split_column: str | None = None
    split: SplitSettings | None = None

    def columns(self, task: str) -> list[str]:
        """Every CSV column these options read."""
        used = [self.image_column, *self.metadata, *self.attributes]
        if task != "segmentation" and self.label_column:
            used.append(self.label_column)
        if self.split_column:
            used.append(self.split_column)
        if self.split and self.split.group_by:
            used.append(self.split.group_by)
        return used


def parse_options(spec: DatasetSpec, options: Mapping[str, Any]) -> FolderOptions:
    """Options → `FolderOptions`, refused in one line naming the option and the fix."""
    where = f"dataset '{spec.name}'"
    valid = FolderOptions.__dataclass_fields__
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise RunConfigError(f"{where}: unknown option(s) {unknown}; the folder reader takes {sorted(valid)}")
    if not isinstance(options.get("csv"), str) or not options["csv"]:
        raise RunConfigError(f"{where}: set dataset.options.csv to the table of images (relative to paths.data_dir)")
    if spec.spatial_dims != 2 or spec.in_chans not in (1, 3):
        raise RunConfigError(f"{where}: the folder reader reads 2D grey or RGB images; set spatial_dims: 2 and "
                             "in_chans: 1 or 3")
    if spec.task == "multilabel":
        raise RunConfigError(f"{where}: the folder reader reads one label per image; for multilabel data use the npz "
                             "reader with (N, K) labels")
    metadata = {str(k): str(v) for k, v in dict(options.get("metadata") or {}).items()}
    bad = {k: v for k, v in metadata.items() if v not in METADATA_TYPES}
    if bad:
        raise RunConfigError(f"{where}: metadata column types {bad}; each column is one of {list(METADATA_TYPES)}")
    attributes = options.get("attributes") or ()
    if isinstance(attributes, str):
        raise RunConfigError(f"{where}: dataset.options.attributes must be a list of columns, e.g. [{attributes}]")
    split = options.get("split")
    opts = FolderOptions(
        csv=options["csv"], image_dir=options.get("image_dir"),
        image_column=str(options.get("image_column", "image")), label_column=options.get("label_column", "label"),
        mask_dir=options.get("mask_dir"), mask_pattern=str(options.get("mask_pattern", "{id}.png")),
        metadata=metadata, attributes=tuple(str(a) for a in attributes), split_column=options.get("split_column"),
        split=None if split is None else SplitSettings.from_options(split, where),
    )
    _check_consistency(opts, spec, where)
    return opts


def _check_consistency(opts: FolderOptions, spec: DatasetSpec, where: str) -> None:
    if spec.task == "segmentation" and not opts.mask_dir:
        raise RunConfigError(f"{where}: task segmentation needs dataset.options.mask_dir (the masks are the label)")
    if spec.task != "segmentation" and not opts.label_column:
        raise RunConfigError(f"{where}: task {spec.task} needs dataset.options.label_column")
    if "{id}" not in opts.mask_pattern:
        raise RunConfigError(f"{where}: mask_pattern={opts.mask_pattern!r} must contain {{id}}, e.g. \"{{id}}_mask.png\"")
    if opts.split_column and opts.split is not None:
        raise RunConfigError(f"{where}: split_column (given by the CSV) and split (computed) both set; keep one")
    label = [opts.label_column] if opts.label_column else []
    overlap = sorted(set(label) & (set(opts.metadata) | set(opts.attributes)))
    if overlap:
        raise RunConfigError(f"{where}: the label column {overlap} cannot also be metadata or an attribute; remove it there")
    refuse_label_derived(spec, {"metadata": list(opts.metadata), "attributes": list(opts.attributes)})


# --- the table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """The CSV's rows as columns of text, with the file it came from."""

    path: Path
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))


def read_table(path: Path, required: Sequence[str]) -> Table:
    """The CSV (UTF-8, a BOM tolerated); refused when a configured column is absent."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0]) if rows else []
    if not rows:
        raise InvalidDataError(f"{path}: no rows; write a header line and one row per image")
    missing = [c for c in dict.fromkeys(required) if c not in header]
    if missing:
        raise InvalidDataError(f"{path}: no column(s) {missing} (the CSV has {header}); fix the header or "
                               "dataset.options")
    return Table(path, {c: [(r[c] or "").strip() for r in rows] for c in header})


def image_file(image_dir: Path, value: str) -> Path:
    """The file of one image cell: as written, or with the first existing image suffix."""
    path = image_dir / value
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path
    for suffix in IMAGE_SUFFIXES:
        if path.with_name(path.name + suffix).is_file():
            return path.with_name(path.name + suffix)
    return path.with_name(path.name + IMAGE_SUFFIXES[0])  # absent: the pre-flight names this one


def sample_id(value: str) -> str:
    """An image cell without its image suffix (kept as a POSIX path when it has folders)."""
    path = PurePosixPath(value.replace("\\", "/"))
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_SUFFIXES else str(path)


@dataclass(frozen=True)
class Layout:
    """Where the table and its files are, resolved against the data root."""

    csv: Path
    image_dir: Path
    mask_dir: Path | None

    @classmethod
    def of(cls, data_dir: Path, opts: FolderOptions) -> Layout:
        csv_path = resolve_path(data_dir, opts.csv)
        image_dir = resolve_path(data_dir, opts.image_dir) if opts.image_dir else csv_path.parent
        return cls(csv_path, image_dir, resolve_path(data_dir, opts.mask_dir) if opts.mask_dir else None)

    def files(self, table: Table, opts: FolderOptions) -> tuple[list[Path], list[Path] | None]:
        cells = table.columns[opts.image_column]
        images = [image_file(self.image_dir, c) for c in cells]
        if self.mask_dir is None:
            return images, None
        return images, [self.mask_dir / opts.mask_pattern.format(id=sample_id(c)) for c in cells]


@data_files("folder")
def folder_files(data_dir: Path, spec: DatasetSpec, options: Mapping[str, Any]) -> list:
    """The CSV, and once it is readable every image and mask it names: a missing file is refused
    before training, naming it."""
    opts = parse_options(spec, options)
    layout = Layout.of(data_dir, opts)
    needs = [(layout.csv, f"table of dataset '{spec.name}' (dataset.options.csv)", HOW)]
    if not layout.csv.is_file():
        return needs
    table = read_table(layout.csv, [opts.image_column])
    images, masks = layout.files(table, opts)
    needs += [(p, f"image of row {i + 2} of {layout.csv.name}", HOW) for i, p in enumerate(images)]
    needs += [(p, f"mask of row {i + 2} of {layout.csv.name}", HOW) for i, p in enumerate(masks or [])]
    return needs


# --- columns → arrays ----------------------------------------------------------------------
def is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_TEXT


def label_indices(table: Table, column: str, spec: DatasetSpec) -> np.ndarray:
    """Class indices from names (the YAML's class_names order) or integers 0..num_classes-1."""
    index = {name: i for i, name in enumerate(spec.class_names)}
    out = np.empty(len(table), dtype=np.int64)
    for row, cell in enumerate(table.columns[column]):
        if cell in index:
            out[row] = index[cell]
        elif cell.lstrip("-").isdigit() and 0 <= int(cell) < spec.num_classes:
            out[row] = int(cell)
        else:
            raise InvalidDataError(f"{table.path}, row {row + 2}: label {cell!r} in column '{column}' is neither one of "
                                   f"class_names {list(spec.class_names)} nor an index below num_classes="
                                   f"{spec.num_classes}; fix the cell or the YAML")
    return out


def metadata_column(table: Table, name: str, kind: str) -> tuple[Column, dict[str, Any]]:
    """One declared metadata column for `encode_metadata`, and its coding for the notes."""
    cells = table.columns[name]
    if kind == "categorical":
        categories = tuple(sorted({c for c in cells if not is_missing(c)}))
        code = {c: i for i, c in enumerate(categories)}
        values = np.array([MISSING_CODE if is_missing(c) else code[c] for c in cells], dtype=np.int64)
        return Column(name, values, categories), {"type": kind, "categories": list(categories)}
    values = np.empty(len(cells), dtype=np.float64)
    for row, cell in enumerate(cells):
        try:
            values[row] = np.nan if is_missing(cell) else float(cell)
        except ValueError:
            raise InvalidDataError(f"{table.path}, row {row + 2}: {name}={cell!r} is not a number; fix the cell, leave "
                                   "it empty for missing, or declare the column categorical") from None
    return Column(name, values), {"type": kind, "missing": f"NaN + {name}_missing indicator"}


def attribute_column(table: Table, name: str) -> tuple[np.ndarray, list[str] | str]:
    """Integer codes ≥ 0 as written, else codes of the sorted text values; −1 when missing."""
    cells = table.columns[name]
    known = [c for c in cells if not is_missing(c)]
    if all(c.isdigit() for c in known):
        return np.array([MISSING_CODE if is_missing(c) else int(c) for c in cells], dtype=np.int64), "integer codes"
    values = sorted(set(known))
    code = {v: i for i, v in enumerate(values)}
    return np.array([MISSING_CODE if is_missing(c) else code[c] for c in cells], dtype=np.int64), values


def read_pixels(data: bytes, size: int, chans: int) -> np.ndarray:
    """(chans, size, size) uint8 from an image file's bytes (Lanczos, aspect ratio not kept)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        resized = im.convert("L" if chans == 1 else "RGB").resize((size, size), Image.Resampling.LANCZOS)
        pixels = np.asarray(resized, dtype=np.uint8)
    return pixels[None] if chans == 1 else pixels.transpose(2, 0, 1)


def read_files(images: list[Path], masks: list[Path] | None, spec: DatasetSpec,
               root: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Every image (and mask) at the YAML's size, and a SHA-256 over their names and bytes."""
    digest = hashlib.sha256()
    pixels, mask_pixels = [], []
    for k, path in enumerate(images):
        data = path.read_bytes()
        digest.update(f"{_relative(path, root)}:{hashlib.sha256(data).hexdigest()}".encode())
        pixels.append(read_pixels(data, spec.size, spec.in_chans))
        if masks is not None:
            digest.update(f"{_relative(masks[k], root)}:{sha256_file(masks[k])}".encode())
            mask_pixels.append(read_mask(masks[k], spec.size)[None])
    stacked_masks = np.stack(mask_pixels) if masks is not None else None
    return np.stack(pixels), stacked_masks, digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    """A path relative to the data root when under it (so the checksum is the same on any machine)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


# --- the reader ----------------------------------------------------------------------------
@dataclass
class Extras:
    """Per-row extras (all rows) and what the notes should say about them."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def table_extras(table: Table, opts: FolderOptions) -> Extras:
    out = Extras()
    if opts.metadata:
        columns, coding = zip(*(metadata_column(table, n, k) for n, k in opts.metadata.items()))
        out.arrays["metadata"], names = encode_metadata(columns)
        out.notes.update({"metadata_names": names, "metadata_coding": dict(zip(opts.metadata, coding))})
    if opts.attributes:
        codes, coding = zip(*(attribute_column(table, n) for n in opts.attributes))
        out.arrays["attributes"] = np.stack(codes, axis=1)
        out.notes.update({"attribute_names": list(opts.attributes), "attribute_coding": dict(zip(opts.attributes, coding)),
                          "attribute_missing_value": MISSING_CODE})
    return out


def table_split(table: Table, opts: FolderOptions, spec: DatasetSpec, ids: list[str],
                labels: np.ndarray | None, data_dir: Path) -> Split:
    if opts.split_column:
        return split_from_column(table.columns[opts.split_column], ids, f"{table.path}, column '{opts.split_column}'")
    settings = opts.split or SplitSettings()
    groups = table.columns[settings.group_by] if settings.group_by else None
    if groups is not None and any(is_missing(g) for g in groups):
        row = next(i for i, g in enumerate(groups) if is_missing(g))
        raise InvalidDataError(f"{table.path}, row {row + 2}: no value in group column '{settings.group_by}'; "
                               "every row needs its group (e.g. the patient id)")
    return make_or_load_split(dataset=spec.name, ids=ids, strata=labels, groups=groups, settings=settings,
                              default_dir=table.path.parent / ".dkbench_splits", data_dir=data_dir)


def _unique_ids(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if twice:
        raise InvalidDataError(f"{path}: images {twice[:3]} are listed more than once; keep one row per image")


@register_dataset("folder")
def read_folder(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """Image files + a CSV as the YAML's options describe them (module docstring)."""
    opts = parse_options(spec, options)
    check_data_files("folder", data_dir, spec, options)  # the CSV, then every image and mask
    layout = Layout.of(Path(data_dir), opts)
    table = read_table(layout.csv, opts.columns(spec.task))
    ids = [sample_id(c) for c in table.columns[opts.image_column]]
    _unique_ids(ids, layout.csv)
    configured = {*({"mask", "bbox"} if opts.mask_dir else ()), *({"metadata"} if opts.metadata else ()),
                  *({"attributes"} if opts.attributes else ())}
    spec, warnings = configured_spec(spec, configured)
    labels = None if spec.task == "segmentation" else label_indices(table, str(opts.label_column), spec)
    extras = table_extras(table, opts)  # before the images: a bad cell fails fast
    split = table_split(table, opts, spec, ids, labels, Path(data_dir))
    image_paths, mask_paths = layout.files(table, opts)
    images, masks, files_digest = read_files(image_paths, mask_paths, spec, Path(data_dir))
    if masks is not None:
        extras.arrays.update({"mask": masks, "bbox": masks_to_bbox(masks)})
    ids_array = np.array(ids)
    splits = {}
    for name in SPLITS:
        idx = split.indices[name]
        label = masks[idx] if spec.task == "segmentation" else labels[idx]  # type: ignore[index]
        splits[name] = SplitArrays(image=images[idx], label=label, ids=ids_array[idx],
                                   extras={k: v[idx] for k, v in extras.arrays.items() if k in spec.provides})
    checksum = hashlib.sha256(f"{sha256_file(layout.csv)}:{files_digest}".encode()).hexdigest()
    notes: dict[str, Any] = {"data_file": str(layout.csv), **split.notes, **extras.notes,
                             "label_derived": sorted(spec.label_derived)}
    notes["warnings"] = [*split.notes.get("warnings", []), *warnings]
    return DatasetArrays(spec=spec, splits=splits, checksum=checksum, notes=notes)
