"""The data path for accelerators: resident arrays with device index batches, lazy strings,
device-side vectorised augmentation, pinned host batches and channels_last — all on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dkbench.data.datamodule import DeviceBatches, DKDataModule, InMemoryDataset, LazyStrings
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.data.transforms import AugmentConfig, augment_batch, normalize, translate

ALL_AUG = {"hflip": True, "vflip": True, "rot90": True, "translate": 0.25}


def _arrays(n=(37, 11, 9), task="binary", hw=(8, 8)) -> DatasetArrays:
    rng = np.random.default_rng(0)
    splits = {}
    for name, size in zip(("train", "val", "test"), n, strict=True):
        image = rng.integers(0, 256, (size, 1, *hw), dtype=np.uint8)
        label = (image[:, 0] > 128).astype(np.int64) if task == "segmentation" else rng.integers(0, 2, size)
        extras = {"text": np.asarray([f"report {name} {i}" for i in range(size)])}
        if task == "segmentation":
            extras["mask"] = label[:, None].astype(np.uint8)
        splits[name] = SplitArrays(image, label, np.asarray([f"{name}-{i}" for i in range(size)]), extras)
    spec = DatasetSpec("toy", task, 2, 1, 2, hw[-1], provides=frozenset(splits["train"].extras))
    return DatasetArrays(spec, splits)


def _fake_trainer(device="cpu", world_size=1, training=True):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                           world_size=world_size, training=training)


def _dm(arrays, trainer=None, **kw) -> DKDataModule:
    dm = DKDataModule(arrays, batch_size=8, eval_batch_size=5, **kw)
    dm.trainer = trainer or _fake_trainer()
    dm.setup("fit")
    return dm


def _epoch(loader) -> list[dict]:
    return list(loader)


def test_resident_epoch_is_a_permutation_with_the_host_content():
    arrays = _arrays()
    host, resident = _dm(arrays, on_device=False), _dm(arrays, on_device=True)
    assert not host.resident and resident.resident
    assert isinstance(resident.train_dataloader().batch_sampler, DeviceBatches)
    train = arrays.splits["train"]
    for dm in (host, resident):
        for _ in range(2):  # len() and coverage hold every epoch
            loader = dm.train_dataloader()
            batches = _epoch(loader)
            assert len(batches) == len(loader) == 5 and len(batches[-1]["index"]) == 37 - 4 * 8  # no drop_last
            index = torch.cat([b["index"] for b in batches])
            assert sorted(index.tolist()) == list(range(37))  # every sample exactly once
            for b in batches:  # normalisation identical to the host reference
                ref = normalize(torch.from_numpy(train.image[b["index"].numpy()]), 0.5, 0.5)
                torch.testing.assert_close(b["image"], ref, rtol=0, atol=0)
                assert b["image"].dtype == torch.float32
                np.testing.assert_array_equal(np.asarray(b["id"]), train.ids[b["index"].numpy()])
    for split, loader_of in (("val", "val_dataloader"), ("test", "test_dataloader")):
        h, r = _epoch(getattr(host, loader_of)()), _epoch(getattr(resident, loader_of)())
        assert len(h) == len(r) == -(-len(arrays.splits[split]) // 5)
        for bh, br in zip(h, r, strict=True):  # eval order is the split's order on both paths
            torch.testing.assert_close(bh["image"], br["image"], rtol=0, atol=0)
            assert bh["index"].tolist() == br["index"].tolist() and list(bh["text"]) == list(br["text"])
        assert torch.cat([b["index"] for b in r]).tolist() == list(range(len(arrays.splits[split])))


def test_on_device_auto_resolution_and_pinning(monkeypatch):
    arrays = _arrays()
    dm = _dm(arrays)  # default is auto
    assert dm.on_device == "auto" and not dm.resident and not dm.train_dataloader().pin_memory
    moved = []
    monkeypatch.setattr(InMemoryDataset, "to", lambda self, device: moved.append(device) or self)
    cuda = _dm(arrays, trainer=_fake_trainer("cuda"))
    assert cuda.resident and moved and all(d.type == "cuda" for d in moved)
    moved.clear()
    for kw, trainer in (({"on_device": False}, _fake_trainer("cuda")), ({}, _fake_trainer("cuda", world_size=2))):
        host = _dm(arrays, trainer=trainer, **kw)  # host data on CUDA: page-locked batches
        assert not host.resident and not moved
        assert host.train_dataloader().pin_memory and host.val_dataloader().pin_memory
    with pytest.raises(ValueError, match="on_device"):
        DKDataModule(arrays, on_device="yes")


def test_resident_path_keeps_a_strategy_sampler():
    arrays = _arrays()
    order = list(range(36, -1, -1))
    dm = _dm(arrays, on_device=True, sampler_factory=lambda ds: order)
    loader = dm.train_dataloader()
    assert not isinstance(loader.batch_sampler, DeviceBatches)
    assert torch.cat([b["index"] for b in loader]).tolist() == order


def test_lazy_strings_read_the_host_only_when_used():
    values = np.asarray(["a", "b", "c", "d"])
    lazy = LazyStrings(values, torch.tensor([3, 0, 2]))
    assert len(lazy) == 3 and lazy._host is None  # len reads a shape, not values
    np.testing.assert_array_equal(np.asarray(lazy), ["d", "a", "c"])
    assert list(lazy) == ["d", "a", "c"] and lazy[1] == "a" and lazy[-2:] == ["a", "c"]
    assert [str(i) for i in lazy] == lazy.tolist()
    np.asarray(lazy)[0] = "z"  # callers get a copy
    assert lazy[0] == "d"
    batch = InMemoryDataset(_arrays().splits["test"], "binary", 0.5, 0.5).__getitems__(torch.tensor([4, 1]))
    assert isinstance(batch["id"], LazyStrings) and np.asarray(batch["id"]).tolist() == ["test-4", "test-1"]
    assert batch["text"][0] == "report test 4"


def _roll_reference(t, shifts):
    return torch.stack([torch.roll(t[i], (int(s[0]), int(s[1])), dims=(-2, -1)) for i, s in enumerate(shifts)])


@pytest.mark.parametrize("shape", [(6, 3, 7, 5), (6, 7, 5), (6, 2, 4, 7, 5), (6, 3, 2, 7, 5)])
def test_translate_equals_the_per_sample_roll(shape):
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, 255, shape, generator=gen, dtype=torch.uint8)
    for _ in range(5):
        shifts = torch.randint(-9, 10, (shape[0], 2), generator=gen)  # beyond the size too
        assert torch.equal(translate(t, shifts), _roll_reference(t, shifts))
    torch.testing.assert_close(translate(t.float().transpose(-1, -2), shifts),
                               _roll_reference(t.float().transpose(-1, -2), shifts))  # non-contiguous input


@pytest.mark.parametrize("spatial", [(8, 8), (3, 8, 8)])
def test_augmentation_keeps_image_mask_and_label_aligned(spatial):
    gen = torch.Generator().manual_seed(2)
    label = torch.randint(0, 2, (16, *spatial), generator=gen)
    batch = {"image": label[:, None].float() * 3 + 1, "mask": label[:, None].to(torch.uint8), "label": label,
             "views": torch.stack([label, 1 - label], 1)[:, :, None].float()}
    out = augment_batch(batch, AugmentConfig(**ALL_AUG), "segmentation", torch.Generator().manual_seed(3))
    assert not torch.equal(out["label"], label)  # something moved
    assert torch.equal(out["image"], out["label"][:, None].float() * 3 + 1)
    assert torch.equal(out["mask"][:, 0].long(), out["label"])
    assert torch.equal(out["views"][:, 0, 0], out["label"].float()) and torch.equal(out["views"][:, 1, 0], 1.0 - out["label"])
    # same seed, same augmentation; the random numbers follow the generator
    again = augment_batch(batch, AugmentConfig(**ALL_AUG), "segmentation", torch.Generator().manual_seed(3))
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_augmentation_matches_the_loop_reference_on_the_same_draws():
    """Same generator draws as the old code (coins, then shifts), with the roll loop."""
    image = torch.randn(10, 2, 6, 6)
    cfg = AugmentConfig(**ALL_AUG)
    out = augment_batch({"image": image}, cfg, "binary", torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    h, v, r = (torch.rand(10, generator=gen) < 0.5 for _ in range(3))
    shifts = torch.randint(-2, 3, (10, 2), generator=gen)
    ref = torch.where(h.view(-1, 1, 1, 1), image.flip(-1), image)
    ref = torch.where(v.view(-1, 1, 1, 1), ref.flip(-2), ref)
    ref = torch.where(r.view(-1, 1, 1, 1), ref.rot90(1, dims=(-2, -1)), ref)
    assert torch.equal(out["image"], _roll_reference(ref, shifts))


def _augmented_epoch(seed, on_device):
    dm = _dm(_arrays(task="segmentation"), on_device=on_device, seed=seed, augment=ALL_AUG)
    return [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]


@pytest.mark.parametrize("on_device", [False, True])
def test_same_seed_same_batches_and_augmentation(on_device):
    a, b, c = _augmented_epoch(0, on_device), _augmented_epoch(0, on_device), _augmented_epoch(1, on_device)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in ("index", "image", "label", "mask"))
        assert torch.equal(x["mask"][:, 0].long(), x["label"])  # aligned after augmentation
    assert not all(torch.equal(x["image"], z["image"]) for x, z in zip(a, c, strict=True))


def test_channels_last_layouts():
    dm = DKDataModule(_arrays(), channels_last=True)
    dm.trainer = _fake_trainer(training=False)
    image = torch.randn(4, 3, 8, 8)
    views = torch.randn(4, 2, 3, 8, 8)
    out = dm.on_after_batch_transfer({"image": image, "views": views, "label": torch.zeros(4)}, 0)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and torch.equal(out["image"], image)
    assert torch.equal(out["views"], views)
    # each view NHWC: the (B·V, C, H, W) reshape of a multi-view network stays channels_last
    assert out["views"].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    volume = torch.randn(2, 1, 4, 8, 8)
    vol = dm.on_after_batch_transfer({"image": volume}, 0)["image"]
    assert vol.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(vol, volume)
    plain = DKDataModule(_arrays()).on_after_batch_transfer({"image": image}, 0)["image"]
    assert plain.is_contiguous()


def test_resident_run_trains_end_to_end(tmp_path):
    """A real Lightning run over the device batch sampler, augmentation and channels_last."""
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import train

    cfg = compose_config([
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=32",
        f"paths.runs_dir={tmp_path / 'runs'}", f"paths.root_dir={tmp_path}",
        "dataset=probe", "backbone=tinycnn", "dataset.options.n_train=64", "dataset.options.n_val=32",
        "dataset.options.n_test=32", "data.on_device=true", "data.channels_last=true",
        "data.augment.hflip=true", "data.augment.translate=0.1",
    ])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/auroc"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resident_cuda_epoch_never_syncs_the_host():
    """Index batches, gather, normalisation, augmentation and bbox: no device→host sync."""
    arrays = _arrays(task="segmentation")
    for split in arrays.splits.values():
        split.extras["bbox"] = np.zeros((len(split), 4), np.float32)
    dm = _dm(arrays, trainer=_fake_trainer("cuda"), augment=ALL_AUG, channels_last=True)
    assert dm.resident and dm.datasets["train"].tensors["image"].is_cuda
    loader = dm.train_dataloader()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [dm.on_after_batch_transfer(b, 0) for b in loader]
        val = list(dm.val_dataloader())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(37))
    assert all(b["image"].is_cuda for b in batches + val)
    assert np.asarray(val[0]["id"]).tolist() == ["val-0", "val-1", "val-2", "val-3", "val-4"]
