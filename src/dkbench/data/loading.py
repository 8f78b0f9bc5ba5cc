"""Dataset config → validated arrays: the one place a reader's output meets its YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.registry import DATASETS
from dkbench.errors import InvalidDataError
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays

SPEC_FIELDS = ("name", "task", "num_classes", "in_chans", "spatial_dims", "size")


def spec_from_config(cfg: Mapping[str, Any]) -> DatasetSpec:
    missing = [f for f in (*SPEC_FIELDS, "reader") if f not in cfg]
    if missing:
        raise ValueError(f"dataset config '{cfg.get('name', '?')}' lacks the fields {missing}")
    return DatasetSpec(
        name=str(cfg["name"]),
        task=cfg["task"],
        num_classes=int(cfg["num_classes"]),
        in_chans=int(cfg["in_chans"]),
        spatial_dims=int(cfg["spatial_dims"]),
        size=int(cfg["size"]),
        provides=frozenset(cfg.get("provides") or ()),
        class_names=tuple(cfg.get("class_names") or ()),
        source=str(cfg.get("source") or cfg["name"]),
        label_derived=frozenset(cfg.get("label_derived") or ()),
    )


def load_dataset(cfg: Mapping[str, Any], data_dir: str | Path) -> DatasetArrays:
    """Read a dataset as its config describes and check the arrays keep the spec's promises.

    `resize` (optional, px) resamples what the reader returned to a smaller square grid
    (`resize_arrays`); the spec's `size` is the reader's native size, the run sees `resize`."""
    spec = spec_from_config(cfg)
    reader = DATASETS.get(str(cfg["reader"]))
    arrays = reader(Path(data_dir), spec, **dict(cfg.get("options") or {}))
    validate(arrays)
    if cfg.get("resize") and int(cfg["resize"]) != spec.size:
        arrays = resize_arrays(arrays, int(cfg["resize"]))
        validate(arrays)
    return arrays


def resize_arrays(arrays: DatasetArrays, size: int) -> DatasetArrays:
    """Down-sample every split to `size` px: images (and views) by area averaging, masks (and
    segmentation labels) by area averaging then ≥ 0.5, boxes (and detection box rows) scaled;
    the spec follows.

    Area averaging is the anti-aliased choice for integer factors; the 0.5 threshold keeps a
    mask's area unbiased. Up-sampling is refused: it adds no information and costs compute."""
    from dataclasses import replace

    import torch
    import torch.nn.functional as F

    spec = arrays.spec
    if size > spec.size or size < 8:
        raise ValueError(
            f"dataset '{spec.name}': resize={size} must be between 8 and the native size {spec.size} px"
        )
    dims = spec.spatial_dims

    def area(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        lead = t.shape[: t.ndim - dims - 1]
        t = t.reshape(-1, *t.shape[-dims - 1:])
        out = F.adaptive_avg_pool2d(t, size) if dims == 2 else F.adaptive_avg_pool3d(t, size)
        return out.reshape(*lead, *out.shape[1:]).numpy()

    def image(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(area(x)), 0, 255).astype(x.dtype)

    def mask(x: np.ndarray) -> np.ndarray:
        binary = x.max() <= 1
        if not binary:  # multi-class label map: majority by nearest neighbour
            t = torch.from_numpy(np.ascontiguousarray(x)).float()
            return F.interpolate(t, size=(size,) * dims, mode="nearest").numpy().astype(x.dtype)
        return (area(x) >= 0.5).astype(x.dtype)

    factor = size / spec.size
    splits = {}
    for name, split in arrays.splits.items():
        extras = dict(split.extras)
        if "mask" in extras:
            extras["mask"] = mask(extras["mask"])
        if "views" in extras:
            extras["views"] = image(extras["views"])
        if "bbox" in extras:
            extras["bbox"] = (extras["bbox"] * factor).astype(extras["bbox"].dtype)
        label = mask(split.label) if spec.task == "segmentation" else split.label
        if spec.task == "detection":  # box rows: coordinates scale, classes and NaN padding stay
            label = split.label.copy()
            label[..., :4] = np.minimum(label[..., :4] * factor, size)  # float rounding never leaves the image
        splits[name] = SplitArrays(image=image(split.image), label=label, ids=split.ids, extras=extras)
    notes = {**arrays.notes, "resized": {"from": spec.size, "to": size, "images": "area average",
                                         "masks": "area average >= 0.5"}}
    return DatasetArrays(spec=replace(spec, size=size), splits=splits, checksum=arrays.checksum, notes=notes)


def validate(arrays: DatasetArrays) -> None:
    spec = arrays.spec
    where = f"dataset '{spec.name}' (configs/dataset/{spec.name}.yaml)"
    missing_splits = [s for s in SPLITS if s not in arrays.splits]
    if missing_splits:
        raise InvalidDataError(f"{where}: the reader returned no {missing_splits} split")
    expected = (spec.in_chans, *([spec.size] * spec.spatial_dims))
    for name, split in arrays.splits.items():
        _check_images(where, name, split)
        if tuple(split.image.shape[1:]) != expected:
            raise InvalidDataError(
                f"{where}, split {name}: images have shape (C, *spatial) = {split.image.shape[1:]}, "
                f"the config promises {expected} (in_chans, size, spatial_dims); fix the YAML or the size"
            )
        lacking = spec.provides - set(split.extras)
        if lacking:
            raise InvalidDataError(f"{where}: provides {sorted(lacking)} but the reader returned none for {name}")
        if "mask" in split.extras and split.extras["mask"].shape[2:] != split.image.shape[2:]:
            raise InvalidDataError(
                f"{where}: masks {split.extras['mask'].shape[2:]} and images "
                f"{split.image.shape[2:]} differ in size"
            )
        if spec.task == "detection":
            from dkbench.data.detection import check_box_labels

            check_box_labels(where, name, split.label, split.ids, spec.size, spec.num_classes)
        else:
            _check_labels(where, name, spec, split.label)
        if spec.task == "segmentation" and split.label.shape[2:] != split.image.shape[2:]:
            raise InvalidDataError(
                f"{where}, split {name}: masks {split.label.shape[2:]} and images {split.image.shape[2:]} differ "
                f"in size; resample the masks to the image grid (nearest neighbour) when building the file"
            )


#: fewest images a split may hold (train: a batch statistic and a shuffle need two)
MIN_SPLIT_SIZE = {"train": 2, "val": 1, "test": 1}


def _check_images(where: str, split: str, arrays: SplitArrays) -> None:
    """uint8 pixels (0–255, the data module divides by 255): float images in [0, 1] would be
    divided again, NaN would reach the metrics, int64 values would overflow the scale."""
    image = arrays.image
    if len(image) < MIN_SPLIT_SIZE[split]:
        raise InvalidDataError(f"{where}, split {split}: {len(image)} image(s); it needs at least "
                               f"{MIN_SPLIT_SIZE[split]} (check the split file or the reader's options)")
    if image.dtype != np.uint8:
        raise InvalidDataError(f"{where}, split {split}: images have dtype {image.dtype}; dkbench reads uint8 "
                               f"pixels 0-255 (it divides by 255): convert the file's images to uint8")


def _check_labels(where: str, split: str, spec: DatasetSpec, label: np.ndarray) -> None:
    if spec.task != "multilabel" and not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
        raise InvalidDataError(f"{where}, split {split}: labels have dtype {label.dtype}; class indices (and mask "
                               f"values) must be integers — a float label such as 0.5 would be truncated")
    if spec.task in ("binary", "multiclass") and len(np.unique(label)) < 2:
        raise InvalidDataError(f"{where}, split {split}: every label is {label.flat[0]!r}; a split needs at least two "
                               f"classes (AUROC, and model selection on it, are undefined with one)")
    if spec.task == "multilabel" and not np.isin(label, (0, 1)).all():
        raise InvalidDataError(f"{where}, split {split}: multilabel targets must be 0 or 1")
    if spec.task in ("binary", "multiclass"):
        if label.ndim != 1 or label.min() < 0 or label.max() >= spec.num_classes:
            raise InvalidDataError(
                f"{where}, split {split}: labels must be class indices in [0, {spec.num_classes}); "
                f"got shape {label.shape}, range [{label.min()}, {label.max()}]"
            )
    elif spec.task == "multilabel":
        if label.ndim != 2 or label.shape[1] != spec.num_classes:
            raise InvalidDataError(f"{where}, split {split}: multilabel targets must be (N, {spec.num_classes})")
    elif spec.task == "segmentation":
        if label.ndim != spec.spatial_dims + 2 or label.shape[1] != 1:
            raise InvalidDataError(
                f"{where}, split {split}: segmentation labels must be masks of shape (N, 1, *spatial); got "
                f"{label.shape}. A dataset without masks cannot be a segmentation task: pick one of the *_seg datasets"
            )
        if label.max() >= max(spec.num_classes, 2):
            raise InvalidDataError(
                f"{where}, split {split}: mask values up to {label.max()} exceed num_classes="
                f"{spec.num_classes}; binarise the masks or raise num_classes"
            )
