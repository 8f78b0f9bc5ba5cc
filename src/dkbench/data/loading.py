"""Dataset config → validated arrays: the one place a reader's output meets its YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.registry import DATASETS
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec

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
    """Read a dataset as its config describes and check the arrays keep the spec's promises."""
    spec = spec_from_config(cfg)
    reader = DATASETS.get(str(cfg["reader"]))
    arrays = reader(Path(data_dir), spec, **dict(cfg.get("options") or {}))
    validate(arrays)
    return arrays


def validate(arrays: DatasetArrays) -> None:
    spec = arrays.spec
    where = f"dataset '{spec.name}' (configs/dataset/{spec.name}.yaml)"
    missing_splits = [s for s in SPLITS if s not in arrays.splits]
    if missing_splits:
        raise ValueError(f"{where}: the reader returned no {missing_splits} split")
    expected = (spec.in_chans, *([spec.size] * spec.spatial_dims))
    for name, split in arrays.splits.items():
        if tuple(split.image.shape[1:]) != expected:
            raise ValueError(
                f"{where}, split {name}: images have shape (C, *spatial) = {split.image.shape[1:]}, "
                f"the config promises {expected} (in_chans, size, spatial_dims); fix the YAML or the size"
            )
        lacking = spec.provides - set(split.extras)
        if lacking:
            raise ValueError(f"{where}: provides {sorted(lacking)} but the reader returned none for {name}")
        if "mask" in split.extras and split.extras["mask"].shape[2:] != split.image.shape[2:]:
            raise ValueError(
                f"{where}: masks {split.extras['mask'].shape[2:]} and images "
                f"{split.image.shape[2:]} differ in size"
            )
        _check_labels(where, name, spec, split.label)


def _check_labels(where: str, split: str, spec: DatasetSpec, label: np.ndarray) -> None:
    if spec.task in ("binary", "multiclass"):
        if label.ndim != 1 or label.min() < 0 or label.max() >= spec.num_classes:
            raise ValueError(
                f"{where}, split {split}: labels must be class indices in [0, {spec.num_classes}); "
                f"got shape {label.shape}, range [{label.min()}, {label.max()}]"
            )
    elif spec.task == "multilabel":
        if label.ndim != 2 or label.shape[1] != spec.num_classes:
            raise ValueError(f"{where}, split {split}: multilabel targets must be (N, {spec.num_classes})")
    elif spec.task == "segmentation":
        if label.max() >= max(spec.num_classes, 2):
            raise ValueError(
                f"{where}, split {split}: mask values up to {label.max()} exceed num_classes="
                f"{spec.num_classes}; binarise the masks or raise num_classes"
            )
