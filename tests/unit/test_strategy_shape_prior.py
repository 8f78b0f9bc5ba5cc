"""shape_prior (SURVEY.md family G): an autoencoder learned on the train masks alone, trained once
and cached, whose frozen encoder scores how far a prediction's shape code is from the ground
truth's: ~0 for the right shape, larger for corrupted shapes, gradient to the prediction only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.metrics.segmentation import one_hot
from dkbench.strategies import STRATEGIES, StrategyContext, create_strategy
from dkbench.strategies.catalogue.shape_prior import masks_to_input, pretrain_count, soft_dice

SIZE = 32
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
CLS_SPEC = DatasetSpec(name="toy_cls", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE)
#: A small, fast autoencoder for 32 px masks (~3 s on one core).
AE = {"ae_size": 32, "latent_dim": 32, "ae_steps": 320}


def ellipses(n: int, seed: int) -> np.ndarray:
    """(n, 1, 32, 32) uint8 masks of randomly placed, sized and rotated ellipses (lesion-like blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(10, 22, 2)
        a, b = rng.uniform(3, 8, 2)
        th = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        masks[i, 0] = (u / a) ** 2 + (v / b) ** 2 <= 1
    return masks


def arrays_with(train_masks: np.ndarray, seed: int = 0) -> DatasetArrays:
    rng = np.random.default_rng(seed)

    def split(masks: np.ndarray, tag: str) -> SplitArrays:
        images = rng.integers(0, 255, masks.shape, dtype=np.uint8)
        return SplitArrays(images, masks, np.asarray([f"{tag}{i}" for i in range(len(masks))]))

    return DatasetArrays(SPEC, {"train": split(train_masks, "tr"), "val": split(ellipses(8, 90), "va"),
                                "test": split(ellipses(8, 91), "te")}, checksum="toy")


def prepared(arrays: DatasetArrays, cache_dir, seed: int = 0, **options):
    strategy = create_strategy("shape_prior", **{**AE, **options})
    strategy.prepare(StrategyContext(arrays=arrays, cache_dir=cache_dir, seed=seed, make_backbone=None))
    return strategy


def logits_of(masks: torch.Tensor) -> torch.Tensor:
    """Confident 2-class logits whose argmax is ``masks`` (B, 1, H, W)."""
    return (one_hot(masks.long(), 2) * 2 - 1) * 10.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return prepared(arrays_with(ellipses(256, 0)), tmp_path_factory.mktemp("cache"))


def test_registered_and_refuses_classification():
    assert "shape_prior" in STRATEGIES.names()
    strategy = create_strategy("shape_prior")
    reason = strategy.incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason and "binary" in reason
    assert strategy.incompatibility(SPEC) is None
    assert "multiple of 8" in create_strategy("shape_prior", ae_size=36).incompatibility(SPEC)


def test_autoencoder_reconstructs_held_out_masks(trained):
    held_out = masks_to_input(ellipses(64, 1), 2, SIZE)
    with torch.no_grad():
        recon = (torch.sigmoid(trained.encoder.eval()(held_out)) > 0.5).float()
    assert float(soft_dice(recon, held_out).mean()) > 0.8  # ~0.89: the codes describe unseen shapes
    assert trained.prior.train_dice > 0.85


def test_loss_zero_for_the_true_shape_and_larger_for_corrupted_shapes(trained):
    target = torch.from_numpy(ellipses(16, 2)).long()
    same = trained.shape_distance(logits_of(target), target)
    assert float(same.max()) < 1e-3  # the prediction is the target: identical codes
    island = target.clone()
    island[:, :, 1:7, 1:7] = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5  # noise patch
    split = target.clone()
    rows = [int(np.argwhere(m[0].numpy()).mean(0)[0].round()) for m in target]
    for i, r in enumerate(rows):
        split[i, 0, r - 1:r + 2] = 0  # cut through the centre: two pieces instead of one blob
    for corrupted in (island, split):
        dist = trained.shape_distance(logits_of(corrupted), target)
        assert bool((dist > same + 1e-3).all())
        assert float(dist.mean()) > 0.05
    # in units of the training codes' spread: two unrelated shapes are ~2 apart
    unrelated = trained.shape_distance(logits_of(torch.from_numpy(ellipses(16, 5)).long()), target)
    assert 0.5 < float(unrelated.mean()) < 5.0
    # the term enters the loss with its weight; the task term is the mean DiceCE
    per_sample = torch.full((16,), 0.7)
    terms = trained.loss_terms(per_sample, {"logits": logits_of(island)}, {"label": target}, "train")
    assert set(terms) == {"task", "shape"}
    torch.testing.assert_close(terms["task"], torch.tensor(0.7))
    expected = 0.1 * trained.shape_distance(logits_of(island), target).mean()
    torch.testing.assert_close(terms["shape"], expected)


def test_encoder_frozen_gradient_reaches_the_prediction_only(trained):
    target = torch.from_numpy(ellipses(4, 3)).long()
    logits = torch.randn(4, 2, SIZE, SIZE, requires_grad=True)
    terms = trained.loss_terms(torch.zeros(4), {"logits": logits}, {"label": target}, "train")
    terms["shape"].backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in trained.encoder.parameters())
    assert not trained.encoder.training


def test_trained_once_cached_and_retrained_when_train_masks_change(tmp_path):
    tiny = {"ae_steps": 4, "ae_size": 16, "latent_dim": 8}
    masks = ellipses(32, 4)
    rng_before = torch.random.get_rng_state()
    start = pretrain_count()
    first = prepared(arrays_with(masks), tmp_path, **tiny)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the run's RNG is not disturbed
    assert pretrain_count() == start + 1 and first.prior.computed
    assert first.prior.path.parent == tmp_path / "shape_prior" and first.prior.path.suffix == ".pt"
    second = prepared(arrays_with(masks, seed=5), tmp_path, **tiny)  # other images, same train masks
    assert pretrain_count() == start + 1 and not second.prior.computed
    for a, b in zip(first.encoder.state_dict().values(), second.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    changed = masks.copy()
    changed[0, 0, 0, 0] = 1  # one pixel of one train mask
    third = prepared(arrays_with(changed), tmp_path, **tiny)
    assert pretrain_count() == start + 2 and third.prior.computed and third.prior.key != first.prior.key
    other_seed = prepared(arrays_with(masks), tmp_path, seed=1, **tiny)
    assert pretrain_count() == start + 3 and other_seed.prior.key != first.prior.key
    # deterministic given the seed: retraining in a fresh cache gives identical weights
    again = prepared(arrays_with(masks), tmp_path / "fresh", **tiny)
    for a, b in zip(first.encoder.state_dict().values(), again.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    meta = again.metadata()
    assert json.dumps(meta) and meta["shape_prior"]["masks"] == "train split only"


def test_pre_stage_uses_the_context_device_and_caches_cpu_tensors(tmp_path, monkeypatch):
    from dkbench.strategies.catalogue import shape_prior as module

    devices = []
    real = module.train_autoencoder

    def spy(inputs, cfg, seed, device="cpu"):
        devices.append(device)
        return real(inputs, cfg, seed, device)

    monkeypatch.setattr(module, "train_autoencoder", spy)
    strategy = create_strategy("shape_prior", ae_steps=2, ae_size=16, latent_dim=8)
    device = torch.device("cpu")
    strategy.prepare(StrategyContext(arrays=arrays_with(ellipses(16, 7)), cache_dir=tmp_path, seed=0,
                                     make_backbone=None, device=device))
    assert devices == [device]
    blob = torch.load(strategy.prior.path, weights_only=True)  # no map_location: as saved
    assert all(v.device.type == "cpu" for v in blob["state_dict"].values()) and blob["code_std"].device.type == "cpu"
    assert strategy.prior.code_std.device.type == "cpu"


def test_shape_loss_reads_nothing_back_from_the_device(trained, monkeypatch):
    """The training-step term needs no host read (the code scale is moved to the device once)."""
    from tests.unit.test_strategy_global_local import no_host_reads

    target = torch.from_numpy(ellipses(4, 5)).long()
    logits = torch.randn(4, 2, SIZE, SIZE, requires_grad=True)
    trained.loss_terms(torch.zeros(4), {"logits": logits}, {"label": target}, "train")  # first call: set-up
    with no_host_reads(monkeypatch):
        terms = trained.loss_terms(torch.zeros(4), {"logits": logits}, {"label": target}, "train")
        terms["shape"].backward()
