"""One LightningDataModule for every dataset: arrays as tensors in memory, batched fetch.

Small medical datasets fit in memory (on the GPU too), so a batch is a single gather over
index tensors through `__getitems__` instead of N `__getitem__` calls and a collate. The
`bbox` of a sample is recomputed from its mask after augmentation, so it stays valid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.data.transforms import AugmentConfig, augment_batch, normalize

#: Extras kept as image-like uint8 tensors and normalised like the image.
IMAGE_LIKE = ("views",)
#: Extras that are strings and travel as Python lists.
STRING_KEYS = ("text",)


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

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        device = self.tensors["image"].device
        gathered = idx.to(device)
        batch: dict[str, Any] = {k: v.index_select(0, gathered) for k, v in self.tensors.items()}
        batch["image"] = normalize(batch["image"], self.mean, self.std)
        for key in IMAGE_LIKE:
            if key in batch:
                batch[key] = normalize(batch[key], self.mean, self.std)
        if self.task == "segmentation":
            batch["label"] = batch["label"].long()
        batch["index"] = gathered
        np_idx = idx.numpy()
        for key, arr in self.strings.items():
            batch[key] = arr[np_idx].tolist()
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])


def bbox_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) {0,1} → (B,4) float (x_min, y_min, x_max, y_max), max exclusive; NaN if empty."""
    m = mask.flatten(1, -3).amax(1) > 0  # (B,H,W)
    rows, cols = m.any(-1), m.any(-2)
    h, w = m.shape[-2:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    big = torch.tensor(10**9, device=m.device)
    y0 = torch.where(rows, ar_h, big).amin(-1)
    y1 = torch.where(rows, ar_h, -1).amax(-1) + 1
    x0 = torch.where(cols, ar_w, big).amin(-1)
    x1 = torch.where(cols, ar_w, -1).amax(-1) + 1
    box = torch.stack([x0, y0, x1, y1], -1).float()
    return torch.where(rows.any(-1, keepdim=True), box, torch.full_like(box, float("nan")))


class DKDataModule(pl.LightningDataModule):
    """Serves train / val / test batches of a loaded dataset.

    `sampler_factory(dataset)` lets a strategy replace the training sampler (curriculum);
    `exclude` removes keys a run must not see (label-derived text, for instance).
    """

    def __init__(
        self,
        arrays: DatasetArrays,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        mean: float = 0.5,
        std: float = 0.5,
        augment: Mapping[str, Any] | None = None,
        on_device: bool = False,
        exclude: frozenset[str] = frozenset(),
        seed: int = 0,
        sampler_factory: Callable[[InMemoryDataset], Sampler | None] | None = None,
    ):
        super().__init__()
        self.arrays = arrays
        self.spec = arrays.spec
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.augment = AugmentConfig(**dict(augment or {}))
        self.on_device = on_device
        self.sampler_factory = sampler_factory
        self.generator = torch.Generator().manual_seed(seed)
        self.datasets = {
            name: InMemoryDataset(split, self.spec.task, mean, std, exclude)
            for name, split in arrays.splits.items()
        }

    def setup(self, stage: str | None = None) -> None:
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            for ds in self.datasets.values():
                ds.to(device)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.datasets[split]
        sampler = self.sampler_factory(ds) if (train and self.sampler_factory) else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=self.generator if train and sampler is None else None,
            collate_fn=identity_collate,
            num_workers=0,  # in-memory gathers: workers would only add IPC cost
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.trainer is not None and self.trainer.training and self.augment.enabled:
            batch = augment_batch(batch, self.augment, self.spec.task, self.generator)
            if "bbox" in batch and "mask" in batch:
                batch["bbox"] = bbox_from_mask(batch["mask"])
        return batch
