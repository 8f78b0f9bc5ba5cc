"""location_prior (SURVEY.md family G): the extra channel is the mean TRAIN mask (val/test masks never
enter it), appended after the untouched image channels, and the backbone gets one more channel.
The prior is a buffer of the strategy (on the run's device, in its checkpoints)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.strategies import STRATEGIES, BuildContext, StepContext, create_strategy

SIZE = 16
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
CLS_SPEC = DatasetSpec(name="toy_cls", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE)


def toy_arrays(seed: int = 0, in_chans: int = 1) -> DatasetArrays:
    rng = np.random.default_rng(seed)

    def split(n: int, tag: str) -> SplitArrays:
        masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
        for i in range(n):  # lesions mostly in the upper-left quadrant
            y, x = rng.integers(0, 8, 2)
            masks[i, 0, y:y + 5, x:x + 5] = 1
        images = rng.integers(0, 255, (n, in_chans, SIZE, SIZE), dtype=np.uint8)
        return SplitArrays(images, masks, np.asarray([f"{tag}{i}" for i in range(n)]))

    spec = DatasetSpec(**{**SPEC.__dict__, "in_chans": in_chans})
    return DatasetArrays(spec, {"train": split(20, "tr"), "val": split(6, "va"), "test": split(6, "te")})


def built(arrays: DatasetArrays, tmp_path, **options):
    """(strategy, network) after `build_net`; the backbone is built as the runner builds it, with
    the strategy's backbone_kwargs (a tiny dense U-Net: segmentation needs full-resolution features)."""
    strategy = create_strategy("location_prior", **options)
    spec = arrays.spec

    def make_backbone(**overrides):
        return create_backbone("unet", **{"in_chans": spec.in_chans, "spatial_dims": 2, "img_size": SIZE,
                                          "channels": (4, 8), "strides": (2,), "features": 4,
                                          **strategy.backbone_kwargs(spec), **overrides})

    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make_backbone, cache_dir=tmp_path, seed=0))
    return strategy, net


def prepared(arrays: DatasetArrays, tmp_path, **options):
    return built(arrays, tmp_path, **options)[0]


def step(stage: str = "train") -> StepContext:
    return StepContext.for_stage(stage, SPEC)


def batch_of(n: int = 4, chans: int = 1, dtype: torch.dtype = torch.float32) -> dict:
    return {"image": torch.randn(n, chans, SIZE, SIZE, dtype=dtype), "label": torch.zeros(n, 1, SIZE, SIZE).long(),
            "index": torch.arange(n), "id": [str(i) for i in range(n)]}


def test_registered_refuses_classification_and_adds_one_input_channel():
    assert "location_prior" in STRATEGIES.names()
    strategy = create_strategy("location_prior")
    reason = strategy.incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason
    assert strategy.incompatibility(SPEC) is None
    assert strategy.backbone_kwargs(SPEC) == {"in_chans": 2}
    assert strategy.backbone_kwargs(DatasetSpec(**{**SPEC.__dict__, "in_chans": 3})) == {"in_chans": 4}
    with pytest.raises(ValueError, match="option 'scaling' must be one of"):
        create_strategy("location_prior", scaling="nope")


def test_channel_is_the_mean_train_mask_and_the_image_is_untouched(tmp_path):
    arrays = toy_arrays()
    strategy, net = built(arrays, tmp_path)
    mean_train = arrays.splits["train"].label.astype(np.float64).mean(0)[0]
    batch = batch_of(4)
    out = strategy.transform_batch(batch, step())
    assert net(out)["logits"].shape == (4, 2, SIZE, SIZE)  # the network reads image + prior channels
    assert out["image"].shape == (4, 2, SIZE, SIZE)
    assert torch.equal(out["image"][:, :1], batch["image"])  # image channels first, unchanged
    assert batch["image"].shape[1] == 1  # the caller's batch is not modified in place
    for i in range(4):  # the same atlas for every sample, scaled 2f - 1 (range scaling)
        np.testing.assert_allclose(out["image"][i, 1].numpy(), 2 * mean_train - 1, atol=1e-6)
    assert float(out["image"][:, 1].max()) <= 1.0 and float(out["image"][:, 1].min()) >= -1.0
    assert json.dumps(strategy.metadata())


def test_only_train_masks_shape_the_prior(tmp_path):
    arrays = toy_arrays()
    base = prepared(arrays, tmp_path).prior.clone()
    for split in ("val", "test"):  # other splits' masks: no effect
        arrays.splits[split].label[:] = 1
    assert torch.equal(prepared(arrays, tmp_path).prior, base)
    arrays.splits["train"].label[0, 0, -1, -1] = 1  # one train pixel: the prior moves there only
    moved = prepared(arrays, tmp_path).prior
    diff = (moved - base).abs() > 0
    assert int(diff.sum()) == 1 and bool(diff[0, 0, -1, -1])
    torch.testing.assert_close(moved[0, 0, -1, -1] - base[0, 0, -1, -1], torch.tensor(2.0 / 20))


def test_standardise_option_device_dtype_and_multichannel(tmp_path):
    arrays = toy_arrays(in_chans=3)
    strategy = prepared(arrays, tmp_path, scaling="standardise")
    out = strategy.transform_batch(batch_of(2, chans=3, dtype=torch.float64), step("val"))
    assert out["image"].shape == (2, 4, SIZE, SIZE) and out["image"].dtype == torch.float64
    prior = out["image"][0, 3]
    assert abs(float(prior.mean())) < 1e-6 and abs(float(prior.std(unbiased=False)) - 1) < 1e-6
    # a batch of another size gets the prior resized, not a shape error
    big = {"image": torch.randn(1, 3, 2 * SIZE, 2 * SIZE)}
    assert strategy.transform_batch(big, step("test"))["image"].shape == (1, 4, 2 * SIZE, 2 * SIZE)


def test_prior_is_a_buffer_in_the_state_dict(tmp_path):
    """The prior follows the strategy to the run's device (here: a dtype move) and into
    checkpoints; a checkpoint restores it."""
    strategy = prepared(toy_arrays(), tmp_path)
    state = strategy.state_dict()
    assert set(state) == {"prior"} and state["prior"].shape == (1, 1, SIZE, SIZE)
    assert dict(strategy.named_buffers())["prior"] is strategy.prior
    other = toy_arrays(seed=3)
    restored = prepared(other, tmp_path)
    assert not torch.equal(restored.prior, strategy.prior)
    restored.load_state_dict(state)
    assert torch.equal(restored.prior, strategy.prior)
    strategy.to(torch.float64)  # Module.to moves (and casts) buffers: no per-batch copy is needed
    assert strategy.prior.dtype == torch.float64
    out = strategy.transform_batch(batch_of(2, dtype=torch.float64), step())
    torch.testing.assert_close(out["image"][0, 1], strategy.prior[0, 0])


# --- detection (issue 18): the atlas of the train BOXES ------------------------------------
DET_SPEC = DatasetSpec(name="toy_det", task="detection", num_classes=1, in_chans=1, spatial_dims=2, size=32)


def toy_detection(shift_eval: bool = False) -> DatasetArrays:
    """Three train images: a box at the top left, a negative, an overlapping box; val/test boxes
    elsewhere (moved further with `shift_eval`), which must not reach the prior."""
    from dkbench.data.detection import pad_boxes

    none = np.zeros((0, 4))
    train = pad_boxes([np.array([[0, 0, 8, 8]]), none, np.array([[4, 4, 12, 12]])])
    far = 16 if shift_eval else 20
    other = pad_boxes([np.array([[far, far, far + 8, far + 8]]), none])

    def split(label, tag):
        return SplitArrays(np.zeros((len(label), 1, 32, 32), np.uint8), label,
                           np.asarray([f"{tag}{i}" for i in range(len(label))]))

    return DatasetArrays(DET_SPEC, {"train": split(train, "tr"), "val": split(other, "va"), "test": split(other, "te")})


def built_detector(arrays: DatasetArrays):
    from dkbench.runner.compose import compose_config

    strategy = create_strategy("location_prior")
    spec = arrays.spec

    def make_backbone(**overrides):
        return create_backbone("tinycnn", **{"in_chans": spec.in_chans, "spatial_dims": 2, "img_size": spec.size,
                                             **strategy.backbone_kwargs(spec), **overrides})

    config = {"model": dict(compose_config(["dataset=probe_det"]).model)}
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make_backbone, config=config))
    return strategy, net


def test_detection_prior_is_the_train_box_frequency_and_the_detector_reads_it():
    from dkbench.models.detector import DetectorNet

    assert create_strategy("location_prior").incompatibility(DET_SPEC) is None
    strategy, net = built_detector(toy_detection())
    assert isinstance(net, DetectorNet)
    frequency = (strategy.prior[0, 0] + 1) / 2  # range scaling: 2f - 1
    # pixel (row, col): (1, 1) only in the first box; (5, 5) in both; (10, 10) in the second; (20, 20) in none;
    # the negative image counts in the denominator
    for (r, c), expected in {(1, 1): 1 / 3, (5, 5): 2 / 3, (10, 10): 1 / 3, (20, 20): 0.0, (8, 3): 0.0}.items():
        assert frequency[r, c].item() == pytest.approx(expected), (r, c)
    # val/test boxes never reach it
    assert torch.equal(built_detector(toy_detection(shift_eval=True))[0].prior, strategy.prior)
    # the detector's pyramid gets image + prior channels, and the run's loss is finite
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.as_tensor(toy_detection().splits["val"].label)}
    moved = strategy.transform_batch(batch, StepContext.for_stage("train", DET_SPEC))
    assert moved["image"].shape == (2, 2, 32, 32) and torch.equal(moved["image"][:, 0], batch["image"][:, 0])
    assert torch.equal(moved["image"][1, 1], strategy.prior[0, 0])
    net.train()
    cls_loss, box_loss = net.per_image_loss(net(moved), moved["label"])
    assert torch.isfinite(cls_loss).all() and box_loss[1] == 0  # the negative image has no box loss
