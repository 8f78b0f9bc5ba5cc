"""Generic `.npz` reader: a researcher's own arrays, described by the dataset YAML alone.

Options (`dataset.options`)::

    file: mydata/arrays.npz            # relative to paths.data_dir, or absolute
    keys: {images: x, labels: y}       # role → array name in the file
    split: {ratios: [0.7, 0.15, 0.15], stratify: true, group_by: null, seed: 0}

Roles: `images` (required), `labels` (binary / multiclass / multilabel), `masks` (required for
segmentation, where the mask is the label; optional otherwise → provides mask, bbox), `ids`
(strings; default the row number) and `split` (per-sample "train" / "val" / "test").

Two layouts. MedMNIST-style split keys: every key holds `{split}`, e.g. `images: "{split}_images"`,
`labels: "{split}_labels"`, read once per split. Or one array set, split by its `split` key or,
without one, as the YAML's `split:` says (`dkbench.data.yaml_split`; `group_by` then names an array
of group ids in the file, e.g. patient ids).

Arrays as stored: images uint8 (N, H, W) grey, (N, H, W, C) or (N, C, H, W) (3D: (N, D, H, W[, C])
or (N, C, D, H, W)) at the YAML's `size` (`resize` trains smaller); labels integers, integral
floats or class names from `class_names`; masks integers (N[, 1], H, W), 0/255 read as 0/1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.registry import check_data_files, data_files, register_dataset
from dkbench.data.saved_splits import masks_to_bbox, sha256_file
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays
from dkbench.data.yaml_split import (
    Split,
    SplitSettings,
    configured_spec,
    ids_digest,
    make_or_load_split,
    refuse_label_derived,
    resolve_path,
    split_from_column,
)
from dkbench.errors import InvalidDataError, RunConfigError

ROLES = ("images", "labels", "masks", "ids", "split")
OPTIONS = ("file", "keys", "split")
SPLIT_PATTERN = "{split}"
HOW = ("point dataset.options.file at your .npz (relative to paths.data_dir or absolute) and map its arrays "
       "with dataset.options.keys (see configs/dataset/example_npz.yaml)")


@dataclass(frozen=True)
class NpzOptions:
    """The reader's typed options."""

    file: str
    keys: dict[str, str]
    split: SplitSettings | None

    @property
    def split_keys(self) -> bool:
        """MedMNIST layout: one set of arrays per split, named through `{split}`."""
        return SPLIT_PATTERN in self.keys["images"]

    def key(self, role: str, split: str | None = None) -> str:
        return self.keys[role].format(split=split) if split else self.keys[role]


def parse_options(spec: DatasetSpec, options: Mapping[str, Any]) -> NpzOptions:
    """Options → `NpzOptions`, refused in one line naming the option and the fix."""
    where = f"dataset '{spec.name}'"
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise RunConfigError(f"{where}: unknown option(s) {unknown}; the npz reader takes {list(OPTIONS)}")
    if not isinstance(options.get("file"), str) or not options["file"]:
        raise RunConfigError(f"{where}: set dataset.options.file to the .npz file (relative to paths.data_dir or absolute)")
    keys = options.get("keys")
    if not isinstance(keys, Mapping) or "images" not in keys:
        raise RunConfigError(f"{where}: set dataset.options.keys to a mapping with at least `images`, "
                             "e.g. {images: x, labels: y}")
    keys = {str(k): str(v) for k, v in keys.items() if v is not None}
    bad_roles = sorted(set(keys) - set(ROLES))
    if bad_roles:
        raise RunConfigError(f"{where}: unknown key role(s) {bad_roles} in dataset.options.keys; valid roles: {list(ROLES)}")
    _check_roles_for_task(spec, keys, where)
    split = options.get("split")
    opts = NpzOptions(file=options["file"], keys=keys,
                      split=None if split is None else SplitSettings.from_options(split, where))
    _check_split_layout(opts, where)
    return opts


def _check_roles_for_task(spec: DatasetSpec, keys: Mapping[str, str], where: str) -> None:
    if spec.task == "segmentation":
        if "masks" not in keys:
            raise RunConfigError(f"{where}: task segmentation needs dataset.options.keys.masks (the masks are the label)")
        if "labels" in keys:
            raise RunConfigError(f"{where}: task segmentation reads no labels (the masks are the label); "
                                 "remove dataset.options.keys.labels")
    elif "labels" not in keys:
        raise RunConfigError(f"{where}: task {spec.task} needs dataset.options.keys.labels (the array of class labels)")


def _check_split_layout(opts: NpzOptions, where: str) -> None:
    """Split keys, a split array and YAML split settings are three ways: one at a time."""
    patterned = sorted(role for role, key in opts.keys.items() if SPLIT_PATTERN in key)
    if opts.split_keys:
        plain = sorted(set(opts.keys) - set(patterned))
        if plain:
            raise RunConfigError(f"{where}: keys.images uses {SPLIT_PATTERN} (one array per split) but keys {plain} do "
                                 f"not; name every key with {SPLIT_PATTERN}, e.g. labels: \"{{split}}_labels\"")
        if "split" in opts.keys or opts.split is not None:
            raise RunConfigError(f"{where}: the file's {SPLIT_PATTERN} keys already split the data; remove "
                                 "keys.split and dataset.options.split")
    elif patterned:
        raise RunConfigError(f"{where}: keys {patterned} use {SPLIT_PATTERN} but keys.images does not; use it in all "
                             "keys or in none")
    elif "split" in opts.keys and opts.split is not None:
        raise RunConfigError(f"{where}: keys.split (a split array in the file) and dataset.options.split (computed "
                             "ratios) both given; keep one")


@data_files("npz")
def npz_files(data_dir: Path, spec: DatasetSpec, options: Mapping[str, Any]) -> list:
    opts = parse_options(spec, options)
    return [(resolve_path(data_dir, opts.file), f"npz file of dataset '{spec.name}' (dataset.options.file)", HOW)]


# --- arrays as stored → arrays as dkbench holds them ----------------------------------------
def channels_first_images(arr: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
    """(N, C, *spatial) uint8 from any of the stored layouts the module docstring lists."""
    if arr.dtype != np.uint8:
        raise InvalidDataError(f"{where}: images have dtype {arr.dtype}; store uint8 pixels 0-255 "
                               "(from floats in [0, 1]: (x * 255).round().astype('uint8'))")
    c, spatial = spec.in_chans, (spec.size,) * spec.spatial_dims
    shape = tuple(arr.shape[1:])
    if shape == (c, *spatial):
        return np.ascontiguousarray(arr)
    if shape == (*spatial, c):
        return np.ascontiguousarray(np.moveaxis(arr, -1, 1))
    if c == 1 and shape == spatial:
        return np.ascontiguousarray(arr[:, None])
    raise InvalidDataError(f"{where}: images have shape {arr.shape}; the YAML (in_chans={c}, size={spec.size}, "
                           f"spatial_dims={spec.spatial_dims}) expects (N, {', '.join(map(str, spatial))}[, {c}]) or "
                           f"(N, {c}, {', '.join(map(str, spatial))}): fix those YAML fields or the file")


def class_indices(arr: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
    """Labels as int64: (N,) class indices, or (N, K) 0/1 rows for multilabel."""
    if arr.dtype.kind in "US":
        arr = _names_to_indices(arr, spec, where)
    elif arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise InvalidDataError(f"{where}: labels hold non-integral values; store class indices (whole numbers)")
    elif arr.dtype.kind not in "iub":
        raise InvalidDataError(f"{where}: labels have dtype {arr.dtype}; store integers or class names")
    if spec.task == "multilabel":
        if arr.ndim != 2 or arr.shape[1] != spec.num_classes:
            raise InvalidDataError(f"{where}: multilabel labels have shape {arr.shape}; store (N, {spec.num_classes}) 0/1 rows "
                                   "(num_classes in the YAML)")
        return arr.astype(np.int64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InvalidDataError(f"{where}: labels have shape {arr.shape}; store one class index per image, (N,) or (N, 1)")
    return arr.astype(np.int64)


def _names_to_indices(arr: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(spec.class_names)}
    unknown = sorted(set(arr.ravel().tolist()) - set(index))
    if unknown:
        raise InvalidDataError(f"{where}: label names {unknown[:5]} are not in the YAML's class_names "
                               f"{list(spec.class_names)}: add them there (their order is the class index)")
    return np.vectorize(index.__getitem__, otypes=[np.int64])(arr)


def mask_array(arr: np.ndarray, spec: DatasetSpec, spatial: tuple[int, ...], where: str) -> np.ndarray:
    """(N, 1, *spatial) uint8 masks; 0/255 files read as 0/1."""
    if arr.dtype.kind not in "iub":
        raise InvalidDataError(f"{where}: masks have dtype {arr.dtype}; store integer masks (0/1, or class indices)")
    if tuple(arr.shape[1:]) == spatial:
        arr = arr[:, None]
    if tuple(arr.shape[1:]) != (1, *spatial):
        raise InvalidDataError(f"{where}: masks have shape {arr.shape}; store (N, {', '.join(map(str, spatial))}) "
                               "on the images' grid")
    values = np.unique(arr)
    if 255 in values and set(values.tolist()) <= {0, 255}:
        arr = arr // 255
    limit = max(spec.num_classes, 2) if spec.task == "segmentation" else 2
    if arr.min() < 0 or arr.max() >= limit:
        raise InvalidDataError(f"{where}: mask values span [{arr.min()}, {arr.max()}]; store values in 0..{limit - 1} "
                               "(binary 0/1 or 0/255; for label maps raise num_classes)")
    return np.ascontiguousarray(arr.astype(np.uint8))


# --- reading -------------------------------------------------------------------------------
@dataclass
class Samples:
    """One set of arrays (a split, or the whole file) in dkbench's layout."""

    images: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None
    ids: np.ndarray

    def take(self, idx: np.ndarray) -> Samples:
        return Samples(self.images[idx], None if self.labels is None else self.labels[idx],
                       None if self.masks is None else self.masks[idx], self.ids[idx])


def _array(z: Any, key: str, role: str, path: Path) -> np.ndarray:
    if key not in z.files:
        raise InvalidDataError(f"{path}: no array '{key}' (dataset.options.keys.{role}); the file holds "
                               f"{sorted(z.files)}: set keys.{role} to one of them")
    return z[key]


def read_samples(z: Any, opts: NpzOptions, spec: DatasetSpec, path: Path, split: str | None = None) -> Samples:
    """The arrays of one split (split keys) or of the whole file, checked and converted."""
    arrays = {role: _array(z, opts.key(role, split), role, path) for role in ("images", "labels", "masks", "ids")
              if role in opts.keys}
    n = len(arrays["images"])
    for role, arr in arrays.items():
        if len(arr) != n:
            raise InvalidDataError(f"{path}: '{opts.key(role, split)}' has {len(arr)} rows but "
                                   f"'{opts.key('images', split)}' {n}; every array needs one row per image")
    images = channels_first_images(arrays["images"], spec, f"{path}, key '{opts.key('images', split)}'")
    labels = masks = None
    if "labels" in arrays:
        labels = class_indices(arrays["labels"], spec, f"{path}, key '{opts.key('labels', split)}'")
    if "masks" in arrays:
        masks = mask_array(arrays["masks"], spec, images.shape[2:], f"{path}, key '{opts.key('masks', split)}'")
    if "ids" in arrays:
        ids = arrays["ids"].astype(str)
    else:
        ids = np.array([f"{split}-{i:06d}" if split else f"{i:06d}" for i in range(n)])
    return Samples(images, labels, masks, ids)


def _check_unique(ids: np.ndarray, path: Path) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InvalidDataError(f"{path}: ids {values[counts > 1][:3].tolist()} occur more than once; "
                               "every sample needs its own id (keys.ids)")


def _computed_split(z: Any, opts: NpzOptions, spec: DatasetSpec, path: Path, samples: Samples,
                    data_dir: Path) -> Split:
    settings = opts.split or SplitSettings()
    groups = None
    if settings.group_by:
        groups = _array(z, settings.group_by, "split.group_by", path).astype(str).ravel()
        if len(groups) != len(samples.ids):
            raise InvalidDataError(f"{path}: group array '{settings.group_by}' has {len(groups)} rows for "
                                   f"{len(samples.ids)} images; store one group id per image")
    strata = samples.labels if spec.task in ("binary", "multiclass") else None
    return make_or_load_split(dataset=spec.name, ids=samples.ids.tolist(), strata=strata, groups=groups,
                              settings=settings, default_dir=path.parent / ".dkbench_splits", data_dir=data_dir)


def _split_arrays(samples: Samples, spec: DatasetSpec) -> SplitArrays:
    extras: dict[str, np.ndarray] = {}
    if samples.masks is not None:
        extras["mask"] = samples.masks
        if spec.spatial_dims == 2:
            extras["bbox"] = masks_to_bbox(samples.masks)
    label = samples.masks if spec.task == "segmentation" else samples.labels
    return SplitArrays(image=samples.images, label=label, ids=samples.ids,  # type: ignore[arg-type]
                       extras={k: v for k, v in extras.items() if k in spec.provides})


@register_dataset("npz")
def read_npz(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """A user's `.npz` as the YAML's options describe it (module docstring)."""
    opts = parse_options(spec, options)
    refuse_label_derived(spec, {"read as images or masks": [opts.keys[r] for r in ("images", "masks") if r in opts.keys]})
    check_data_files("npz", data_dir, spec, options)
    path = resolve_path(data_dir, opts.file)
    configured = ({"mask", "bbox"} if spec.spatial_dims == 2 else {"mask"}) if "masks" in opts.keys else set()
    spec, warnings = configured_spec(spec, configured)
    with np.load(path, allow_pickle=False) as z:
        if opts.split_keys:
            parts = {s: read_samples(z, opts, spec, path, s) for s in SPLITS}
            all_ids = np.concatenate([parts[s].ids for s in SPLITS])
            _check_unique(all_ids, path)
            offsets = np.cumsum([0, *(len(parts[s].ids) for s in SPLITS)])
            indices = {s: np.arange(offsets[k], offsets[k + 1]) for k, s in enumerate(SPLITS)}
            digest = ids_digest(indices, all_ids.tolist())
            split_notes = {"split_method": f"given by the file's split keys ({opts.keys['images']})",
                           "split_hash": digest, "split_file": None, "split_ids_sha256": digest, "warnings": []}
        else:
            samples = read_samples(z, opts, spec, path)
            _check_unique(samples.ids, path)
            if "split" in opts.keys:
                split = split_from_column(_array(z, opts.keys["split"], "split", path).ravel(), samples.ids.tolist(),
                                          f"{path}, key '{opts.keys['split']}'")
            else:
                split = _computed_split(z, opts, spec, path, samples, data_dir)
            parts = {s: samples.take(idx) for s, idx in split.indices.items()}
            split_notes = split.notes
    notes: dict[str, Any] = {"data_file": str(path), "npz_keys": dict(opts.keys), **split_notes,
                             "label_derived": sorted(spec.label_derived)}
    notes["warnings"] = [*split_notes.get("warnings", []), *warnings]
    return DatasetArrays(spec=spec, splits={s: _split_arrays(parts[s], spec) for s in SPLITS},
                         checksum=sha256_file(path), notes=notes)
