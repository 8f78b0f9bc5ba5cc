"""shape_prior (SURVEY.md family G): an autoencoder learned on the train masks alone, trained once
and cached, whose frozen encoder scores how far a prediction's shape code is from the ground
truth's: ~0 for the right shape, larger for corrupted shapes, gradient to the prediction only.
The frozen autoencoder is a submodule of the strategy and its code scale a buffer (both in the
checkpointed state_dict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.metrics.segmentation import one_hot, soft_dice
from dkbench.strategies import STRATEGIES, BuildContext, StepContext, create_strategy
from dkbench.strategies.base import task_net
from dkbench.strategies.catalogue.shape_prior import cache_key, masks_to_input, pretrain_count

SIZE = 32
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
CLS_SPEC = DatasetSpec(name="toy_cls", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE)
#: A small, fast autoencoder for 32 px masks (~3 s on one core).
AE = {"ae_size": 32, "latent_dim": 32, "ae_steps": 320}
STEP = StepContext.for_stage("train", SPEC)


def tiny_unet(**overrides):
    """The smallest dense backbone: segmentation needs full-resolution features."""
    return create_backbone("unet", **{"in_chans": SPEC.in_chans, "spatial_dims": 2, "img_size": SIZE,
                                      "channels": (4, 8), "strides": (2,), "features": 4, **overrides})


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


def built(arrays: DatasetArrays, cache_dir, seed: int = 0, **options):
    """(strategy, network) after `build_net`, which trains or loads the prior."""
    strategy = create_strategy("shape_prior", **{**AE, **options})
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=tiny_unet, cache_dir=cache_dir, seed=seed))
    return strategy, net


def prepared(arrays: DatasetArrays, cache_dir, seed: int = 0, **options):
    return built(arrays, cache_dir, seed, **options)[0]


def logits_of(masks: torch.Tensor) -> torch.Tensor:
    """Confident 2-class logits whose argmax is ``masks`` (B, 1, H, W)."""
    return (one_hot(masks.long(), 2) * 2 - 1) * 10.0


#: `cache_key` of `arrays_with(ellipses(32, 4))`, seed 0, ae_size 16 / latent_dim 8 / ae_steps 4,
#: as computed by the pre-v2 code (hashlib over its own json.dumps)
PINNED_KEY = "toy_seg-dbdf725b3f6a1499"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return prepared(arrays_with(ellipses(256, 0)), tmp_path_factory.mktemp("cache"))


def test_registered_and_refuses_classification():
    assert "shape_prior" in STRATEGIES.names()
    strategy = create_strategy("shape_prior")
    reason = strategy.incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason and "binary" in reason
    assert strategy.incompatibility(SPEC) is None
    with pytest.raises(ValueError, match="option 'ae_size' must be a positive multiple of 8"):
        create_strategy("shape_prior", ae_size=36)
    with pytest.raises(ValueError, match="ae_size"):
        create_strategy("shape_prior", ae_size=16, ae_channels=[4, 4, 4, 4, 4])  # 32 > 16


def test_autoencoder_reconstructs_held_out_masks(trained):
    held_out = masks_to_input(ellipses(64, 1), 2, SIZE)
    with torch.no_grad():
        recon = (torch.sigmoid(trained.autoencoder(held_out)) > 0.5).float()
    assert float(soft_dice(recon, held_out).mean()) > 0.8  # ~0.89: the codes describe unseen shapes
    assert trained.prior_file.train_dice > 0.85


def test_loss_zero_for_the_true_shape_and_larger_for_corrupted_shapes(trained):
    target = torch.from_numpy(ellipses(16, 2)).long()
    same = trained.shape_distance(logits_of(target), target, 2)
    assert float(same.max()) < 1e-3  # the prediction is the target: identical codes
    island = target.clone()
    island[:, :, 1:7, 1:7] = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5  # noise patch
    split = target.clone()
    rows = [int(np.argwhere(m[0].numpy()).mean(0)[0].round()) for m in target]
    for i, r in enumerate(rows):
        split[i, 0, r - 1:r + 2] = 0  # cut through the centre: two pieces instead of one blob
    for corrupted in (island, split):
        dist = trained.shape_distance(logits_of(corrupted), target, 2)
        assert bool((dist > same + 1e-3).all())
        assert float(dist.mean()) > 0.05
    # in units of the training codes' spread: two unrelated shapes are ~2 apart
    unrelated = trained.shape_distance(logits_of(torch.from_numpy(ellipses(16, 5)).long()), target, 2)
    assert 0.5 < float(unrelated.mean()) < 5.0
    # the term enters the loss with its weight; the task term is the mean DiceCE
    per_sample = torch.full((16,), 0.7)
    terms = trained.loss_terms(per_sample, {"logits": logits_of(island)}, {"label": target}, STEP)
    assert set(terms) == {"task", "shape"}
    torch.testing.assert_close(terms["task"], torch.tensor(0.7))
    expected = 0.1 * trained.shape_distance(logits_of(island), target, 2).mean()
    torch.testing.assert_close(terms["shape"], expected)


def test_encoder_frozen_gradient_reaches_the_prediction_only(trained):
    target = torch.from_numpy(ellipses(4, 3)).long()
    logits = torch.randn(4, 2, SIZE, SIZE, requires_grad=True)
    terms = trained.loss_terms(torch.zeros(4), {"logits": logits}, {"label": target}, STEP)
    terms["shape"].backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in trained.autoencoder.parameters())
    assert not trained.autoencoder.training
    trained.train()  # Lightning switches the whole module (the strategy included) to training mode
    assert trained.training and not trained.autoencoder.training


def test_prior_is_strategy_state_on_the_run_device_and_in_checkpoints(trained, tmp_path):
    """The frozen autoencoder is a registered submodule and σ a buffer: both appear in the
    strategy's state_dict (hence the LightningModule's checkpoints) and move with `.to()`."""
    state = trained.state_dict()
    assert "code_std" in state and dict(trained.named_buffers())["code_std"] is trained.code_std
    assert {k for k in state if k.startswith("autoencoder.")} == {
        f"autoencoder.{k}" for k in trained.autoencoder.state_dict()}
    assert dict(trained.named_children())["autoencoder"] is trained.autoencoder
    # a fresh strategy built from the same cache restores the saved state exactly
    fresh = prepared(arrays_with(ellipses(256, 0)), tmp_path, seed=1)  # other seed: other weights
    assert not torch.equal(fresh.autoencoder.to_code.weight, trained.autoencoder.to_code.weight)
    fresh.load_state_dict(state)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    moved = fresh.to(torch.float64)
    assert moved.code_std.dtype == torch.float64 and moved.autoencoder.to_code.weight.dtype == torch.float64


def test_trained_once_cached_and_retrained_when_train_masks_change(tmp_path):
    tiny = {"ae_steps": 4, "ae_size": 16, "latent_dim": 8}
    masks = ellipses(32, 4)
    torch.manual_seed(7)
    plain = task_net(tiny_unet(), SPEC)  # the run's network without a prior, and the RNG after it
    rng_after_plain = torch.random.get_rng_state()
    start = pretrain_count()
    torch.manual_seed(7)
    first, net = built(arrays_with(masks), tmp_path, **tiny)
    # the run's RNG is not disturbed by the pre-stage: same network initialisation, same stream after
    assert torch.equal(torch.random.get_rng_state(), rng_after_plain)
    for a, b in zip(plain.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert pretrain_count() == start + 1 and first.prior_file.computed
    assert first.prior_file.path.parent == tmp_path / "shape_prior" and first.prior_file.path.suffix == ".pt"
    # written atomically: the cache file and its lock, no temporary file left behind
    assert sorted(p.name for p in (tmp_path / "shape_prior").iterdir()) == sorted(
        [first.prior_file.path.name, f"{first.prior_file.key}.lock"])
    # the key is the pre-v2 key (json of the payload, sha256, 16 hex digits): old cache files still hit
    assert first.prior_file.key == PINNED_KEY == cache_key(arrays_with(masks), first.ae_config(SPEC), 0)
    second = prepared(arrays_with(masks, seed=5), tmp_path, **tiny)  # other images, same train masks
    assert pretrain_count() == start + 1 and not second.prior_file.computed
    for a, b in zip(first.autoencoder.state_dict().values(), second.autoencoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.code_std, second.code_std)
    changed = masks.copy()
    changed[0, 0, 0, 0] = 1  # one pixel of one train mask
    third = prepared(arrays_with(changed), tmp_path, **tiny)
    assert pretrain_count() == start + 2 and third.prior_file.computed and third.prior_file.key != first.prior_file.key
    other_seed = prepared(arrays_with(masks), tmp_path, seed=1, **tiny)
    assert pretrain_count() == start + 3 and other_seed.prior_file.key != first.prior_file.key
    # deterministic given the seed: retraining in a fresh cache gives identical weights
    again = prepared(arrays_with(masks), tmp_path / "fresh", **tiny)
    for a, b in zip(first.autoencoder.state_dict().values(), again.autoencoder.state_dict().values(), strict=True):
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
    strategy.build_net(BuildContext(arrays=arrays_with(ellipses(16, 7)), make_backbone=tiny_unet,
                                    cache_dir=tmp_path, seed=0, device=device))
    assert devices == [device]
    blob = torch.load(strategy.prior_file.path, weights_only=True)  # no map_location: as saved
    assert all(v.device.type == "cpu" for v in blob["state_dict"].values()) and blob["code_std"].device.type == "cpu"
    assert strategy.code_std.device.type == "cpu"


def test_shape_loss_reads_nothing_back_from_the_device(trained, monkeypatch):
    """The training-step term needs no host read (the code scale is a buffer, on the device)."""
    from tests.unit.test_strategy_global_local import no_host_reads

    target = torch.from_numpy(ellipses(4, 5)).long()
    logits = torch.randn(4, 2, SIZE, SIZE, requires_grad=True)
    with no_host_reads(monkeypatch):
        terms = trained.loss_terms(torch.zeros(4), {"logits": logits}, {"label": target}, STEP)
        terms["shape"].backward()


@pytest.mark.parametrize("dims,size", [(2, 64), (3, 16)])
def test_prior_initialisation_equals_global_seeding_without_touching_it(dims, size):
    """The autoencoder's own generator gives the weights `torch.manual_seed` + construction gave
    (cached priors stay valid) and leaves the global stream where it was."""
    from dkbench.seeding import seeded_module
    from dkbench.strategies.catalogue.shape_prior import ShapeAEConfig, ShapeAutoencoder

    cfg = ShapeAEConfig(spatial_dims=dims, size=size)
    torch.manual_seed(3)
    reference = ShapeAutoencoder(cfg).state_dict()
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    seeded = seeded_module(lambda: ShapeAutoencoder(cfg), 3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(reference.values(), seeded.values(), strict=True))
