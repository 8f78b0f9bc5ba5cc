"""One LightningDataModule for every dataset: arrays as tensors in memory, batched fetch.

Small medical datasets fit in memory (on the GPU too), so a batch is a single gather over
index tensors through `__getitems__` instead of N `__getitem__` calls and a collate. The
`bbox` of a sample is recomputed from its mask after augmentation, so it stays valid.

Two paths. Host: the arrays stay in host memory, the DataLoader's sampler builds index lists
and batches are pinned when the accelerator is CUDA. Resident (`on_device`, by default on
CUDA): the uint8 arrays live on the accelerator and the index tensors are made there too
(`DeviceBatches`), so gather, normalisation and augmentation run without a host sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.data.transforms import AugmentConfig, augment_batch, normalize
from dkbench.errors import RunConfigError
from dkbench.geometry.boxes import box_from_mask

#: Extras kept as image-like uint8 tensors and normalised like the image.
IMAGE_LIKE = ("views",)
#: Extras that are strings and travel as Python lists.
STRING_KEYS = ("text",)


class LazyStrings:
    """A batch's strings (`id`, `text`), copied to the host only when something reads them.

    Holding the index tensor instead of a list keeps a resident batch free of device→host
    syncs until a step actually needs the strings (the test predictions do). Behaves as a
    read-only list: `len`, iteration, indexing, `tolist()`, `np.asarray(...)`. Deliberately
    not a `Sequence`, so Lightning's and the DataLoader's collection walkers (device transfer,
    pinning) pass it through untouched instead of rebuilding it element by element.
    """

    __slots__ = ("_host", "_index", "_values")

    def __init__(self, values: np.ndarray, index: torch.Tensor):
        self._values, self._index = values, index
        self._host: np.ndarray | None = None

    def _array(self) -> np.ndarray:
        if self._host is None:
            self._host = self._values[self._index.cpu().numpy()]
        return self._host

    def tolist(self) -> list:
        return self._array().tolist()

    def __len__(self) -> int:
        return int(self._index.shape[0])  # a shape, not a value: no sync

    def __iter__(self):
        return iter(self.tolist())

    def __getitem__(self, i: Any) -> Any:
        return self.tolist()[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array(self._array(), dtype=dtype)  # a copy: the cache stays unchanged

    def __repr__(self) -> str:
        return f"LazyStrings({self.tolist()!r})"


class DeviceBatches:
    """Batch sampler yielding index tensors on `device`: a `randperm` (train) or `arange` slices.

    The DataLoader hands each yielded item unchanged to `__getitems__`, so the permutation,
    the slices and the gather stay on the device. The last batch may be short (no drop_last),
    as with the host loader, so `len()` is the same every epoch.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
        self.n, self.batch_size, self.device, self.generator = n, batch_size, device, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        if self.generator is None:
            order = torch.arange(self.n, device=self.device)
        else:
            order = torch.randperm(self.n, device=self.device, generator=self.generator)
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size]


def identity_collate(batch: Any) -> Any:
    """`__getitems__` already returns a collated batch."""
    return batch


class InMemoryDataset(Dataset):
    """A split as tensors; `__getitems__(indices)` returns one batch dict."""

    def __init__(self, split: SplitArrays, task: str, mean: float, std: float, exclude: frozenset[str] = frozenset()):
        self.task = task
        self.mean, self.std = mean, std
        self.tensors: dict[str, torch.Tensor] = {
            "image": torch.from_numpy(np.ascontiguousarray(split.image)),
            "label": torch.from_numpy(np.ascontiguousarray(split.label)),
        }
        self.strings: dict[str, np.ndarray] = {"id": np.asarray(split.ids)}
        for key, arr in split.extras.items():
            if key in exclude:
                continue
            if key in STRING_KEYS:
                self.strings[key] = np.asarray(arr)
            else:
                self.tensors[key] = torch.from_numpy(np.ascontiguousarray(arr))

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def to(self, device: torch.device | str) -> InMemoryDataset:
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self

    def __getitems__(self, indices: list[int] | torch.Tensor) -> dict[str, Any]:
        """One batch; `indices` a host list or an index tensor (kept on its device)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        gathered = idx.to(self.tensors["image"].device)
        # gather uint8, then normalise: on a resident dataset both run on the device
        batch: dict[str, Any] = {k: v.index_select(0, gathered) for k, v in self.tensors.items()}
        batch["image"] = normalize(batch["image"], self.mean, self.std)
        for key in IMAGE_LIKE:
            if key in batch:
                batch[key] = normalize(batch[key], self.mean, self.std)
        if self.task == "segmentation":
            batch["label"] = batch["label"].long()
        batch["index"] = gathered
        for key, arr in self.strings.items():
            batch[key] = LazyStrings(arr, idx)
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])


class DKDataModule(pl.LightningDataModule):
    """Serves train / val / test batches of a loaded dataset.

    `on_device`: True keeps the uint8 arrays on the trainer's root device, False on the host,
    "auto" resolves in `setup` to True when that device is CUDA. `sampler_factory(dataset)`
    lets a strategy replace the training sampler (curriculum); such a sampler yields host
    indices, so its batches take one small host→device index copy even when resident.
    `exclude` removes keys a run must not see (label-derived text, for instance).
    `channels_last` stores images in NHWC (NDHWC for volumes) after the transfer.
    """

    def __init__(
        self,
        arrays: DatasetArrays,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        mean: float = 0.5,
        std: float = 0.5,
        augment: Mapping[str, Any] | None = None,
        on_device: bool | str = "auto",
        exclude: frozenset[str] = frozenset(),
        seed: int = 0,
        sampler_factory: Callable[[InMemoryDataset], Sampler | None] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.arrays = arrays
        self.spec = arrays.spec
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.augment = AugmentConfig(**dict(augment or {}))
        if self.spec.task == "detection" and self.augment.translate > 0:
            # translation rolls pixels around the border: a lesion cut in two has no one box
            raise RunConfigError(f"data.augment.translate={self.augment.translate}: translation wraps lesions "
                                 f"around the image border, which boxes cannot follow; set "
                                 f"data.augment.translate=0 for detection (flips and rot90 are supported)")
        if on_device not in (True, False, "auto"):
            raise ValueError(f"data.on_device must be true, false or auto, got {on_device!r}")
        self.on_device = on_device
        self.resident = on_device is True  # resolved again in setup, once the device is known
        self._pin_memory = False
        self.channels_last = channels_last
        self.sampler_factory = sampler_factory
        self.seed = seed
        # the CPU generator serves the host sampler and CPU augmentation (as before); other
        # devices get their own, so their random numbers never leave the device
        self.generator = torch.Generator().manual_seed(seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self.datasets = {
            name: InMemoryDataset(split, self.spec.task, mean, std, exclude)
            for name, split in arrays.splits.items()
        }

    def generator_for(self, device: torch.device) -> torch.Generator:
        """The run's generator on `device` (seeded from the run seed)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.generator
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._device_generators[device]

    def state_dict(self) -> dict[str, Any]:
        """The shuffling / augmentation generators' states. Lightning stores them in last.ckpt and
        hands them back on resume, so a resumed run draws the batches and augmentations an
        uninterrupted one would (a generator re-seeded at the resume would start epoch k over
        from epoch 0's stream)."""
        return {"generator": self.generator.get_state(),
                "device_generators": {str(d): g.get_state() for d, g in self._device_generators.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        for device, state in state_dict.get("device_generators", {}).items():
            self.generator_for(torch.device(device)).set_state(state)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is None:
            return
        device = self.trainer.strategy.root_device
        # auto stays on the host under multi-process training: Lightning's distributed sampler
        # replaces the sampler, which a device batch sampler cannot take
        auto = device.type == "cuda" and self.trainer.world_size == 1
        self.resident = self.on_device is True or (self.on_device == "auto" and auto)
        # host batches cross to CUDA from page-locked memory; Lightning then copies non_blocking
        self._pin_memory = device.type == "cuda" and not self.resident
        if self.resident:
            for ds in self.datasets.values():
                ds.to(device)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = self.sampler_factory(ds) if (train and self.sampler_factory) else None
        batch_size = self.batch_size if train else self.eval_batch_size
        if self.resident and sampler is None:
            device = ds.tensors["image"].device
            batches = DeviceBatches(len(ds), batch_size, device, self.generator_for(device) if train else None)
            return DataLoader(ds, batch_sampler=batches, collate_fn=identity_collate, num_workers=0)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=self.generator if train and sampler is None else None,
            collate_fn=identity_collate,
            num_workers=0,  # in-memory gathers: workers would only add IPC cost
            pin_memory=self._pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # resident batches are gathered on the device already: skip Lightning's walk over the
        # batch dict (one `apply_to_collection` per key, every step), which is pure host overhead
        if self.resident and batch["image"].device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.trainer is not None and self.trainer.training and self.augment.enabled:
            generator = self.generator_for(batch["image"].device)
            batch = augment_batch(batch, self.augment, self.spec.task, generator)
            if "bbox" in batch and "mask" in batch:
                batch["bbox"] = box_from_mask(batch["mask"])  # NaN rows: no lesion
        if self.channels_last:
            batch = to_channels_last(batch)
        return batch


def _channels_last(t: torch.Tensor, spatial_rank: int) -> torch.Tensor:
    """`t` is (*lead, C, *spatial): each of the lead entries gets the NHWC / NDHWC layout."""
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_rank)
    lead = t.ndim - spatial_rank - 1
    if fmt is None or lead < 1:
        return t
    # a stack of 2D views (B, V, C, H, W) is not a volume: lay each view out NHWC so that the
    # (B·V, C, H, W) reshape a multi-view network makes stays channels_last without a copy
    return t.flatten(0, lead - 1).contiguous(memory_format=fmt).unflatten(0, t.shape[:lead])


def to_channels_last(batch: dict) -> dict:
    """`image` and image-like extras in channels_last (2D) / channels_last_3d (3D) layout."""
    spatial_rank = batch["image"].ndim - 2
    out = dict(batch)
    for key in ("image", *IMAGE_LIKE):
        if key in out:
            out[key] = _channels_last(out[key], spatial_rank)
    return out
