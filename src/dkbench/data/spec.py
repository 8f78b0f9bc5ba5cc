"""What a dataset is and what it offers: the contract between data, strategies and models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dkbench.errors import InvalidDataError

Task = Literal["binary", "multiclass", "multilabel", "segmentation", "detection"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "segmentation", "detection")

#: Keys a sample may carry beyond `image`, `label` and `id`. Strategies declare a subset of
#: these as `requires`; the runner compares it with a dataset's `provides`.
PROVIDABLE = frozenset({"mask", "bbox", "attributes", "metadata", "text", "difficulty", "views"})

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset variant, filled from its YAML and its reader."""

    name: str
    task: Task
    num_classes: int
    in_chans: int
    spatial_dims: int
    size: int
    provides: frozenset[str] = frozenset()
    class_names: tuple[str, ...] = ()
    #: Where the pixels come from. Two datasets with one source share images (BUSI and
    #: BreastMNIST), so one must never be a transfer source or external test set for the other.
    source: str = ""
    #: Keys whose content is derived from the label (BUSI captions): never a model input.
    label_derived: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"dataset '{self.name}': task '{self.task}' is not one of {TASKS}")
        unknown = set(self.provides) - PROVIDABLE
        if unknown:
            raise ValueError(
                f"dataset '{self.name}' provides unknown keys {sorted(unknown)}; "
                f"valid keys: {sorted(PROVIDABLE)}"
            )


@dataclass
class SplitArrays:
    """One split held as numpy arrays (channels-first images, uint8 or float).

    `image` is (N, C, H, W[, D]); `label` is (N,) int for binary / multiclass, (N, K) for
    multilabel, the mask itself for segmentation and (N, K, 5) NaN-padded box rows for
    detection (`dkbench.data.detection`). Optional keys follow `PROVIDABLE`.
    """

    image: np.ndarray
    label: np.ndarray
    ids: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.image)
        for key, arr in {"label": self.label, "ids": self.ids, **self.extras}.items():
            if len(arr) != n:
                raise InvalidDataError(f"split arrays disagree: image has {n} samples, {key} has {len(arr)}; "
                                       "a reader must return one row per image for every array")

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class DatasetArrays:
    """What a reader returns: the spec and the three splits."""

    spec: DatasetSpec
    splits: dict[str, SplitArrays]
    #: SHA-256 of the file(s) read, or of the generator's parameters, for metadata.json.
    checksum: str = ""
    #: Free-form facts the run's metadata should record (split file used, warnings, …).
    notes: dict[str, object] = field(default_factory=dict)


def num_outputs(task: str, num_classes: int) -> int:
    """Logits per sample: two for binary, to match the MedMNIST protocol. (Here, beside the spec,
    so that checking a strategy against a dataset needs no metrics library.)"""
    return 2 if task == "binary" else num_classes
