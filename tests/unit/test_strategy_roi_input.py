"""`roi_input`: pixels outside the expert region cannot reach the network.

Mechanism: (1) perturbing pixels outside the ROI leaves the network's output identical, in
mask mode and (outside the crop box) in crop mode, while perturbing a pixel inside changes
it; (2) on probe images the shortcut marker is removed by the ROI; (3) the predicted-ROI
predictor finds the lesion and the test-time ROI is stated in the run's metadata.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.geometry.boxes import box_from_mask
from dkbench.data.loading import spec_from_config
from dkbench.data.readers.probe import generate_split, marker_present
from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.data.transforms import normalize
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy
from dkbench.strategies.catalogue.roi_input import (
    ROIPredictor,
    crop_boxes,
    evaluate_predictor,
    predicted_region,
    train_roi_predictor,
)

PROBE_OPTS = {"shortcut": {"enabled": True}}
SPEC = spec_from_config(compose_config(["dataset=probe"]).dataset)
TRAIN, VAL, TEST = (StepContext.for_stage(stage, SPEC) for stage in ("train", "val", "test"))


def _arrays(n: int = 16, size: int = 64) -> DatasetArrays:
    splits = {}
    for split in ("train", "val", "test"):
        arr = generate_split(n, size=size, split=split, options=PROBE_OPTS)
        splits[split] = SplitArrays(arr.image, arr.label, arr.ids, extras={"mask": arr.extras["mask"]})
    return DatasetArrays(SPEC, splits)


def _make_backbone(**overrides):
    return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": 64, **overrides})


def _probe_batch(n: int = 16, split: str = "train") -> dict:
    arr = generate_split(n, size=64, split=split, options=PROBE_OPTS)
    mask = torch.from_numpy(arr.extras["mask"])
    return {
        "image": normalize(torch.from_numpy(arr.image), 0.5, 0.5),
        "label": torch.from_numpy(arr.label),
        "mask": mask,
        "bbox": box_from_mask(mask),
        "raw": arr.image,
    }


def _net(strategy):
    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=_arrays(2), make_backbone=_make_backbone))
    return net.eval()


def _outside(batch: dict, strategy) -> torch.Tensor:
    """(B,1,H,W) bool: pixels the strategy's ROI must hide (outside the dilated region / crop box)."""
    shape = tuple(batch["image"].shape[2:])
    if strategy.options.mode == "mask":
        from dkbench.strategies.catalogue.roi_input import dilate, dilation_px
        seen = dilate((batch["mask"] > 0).float(), dilation_px(strategy.options.dilate, shape))
    else:
        from dkbench.strategies.catalogue.roi_input import box_region
        seen = box_region(crop_boxes(batch["bbox"], shape, strategy.options.margin), shape)
    return seen == 0


@pytest.mark.parametrize("mode,fill", [("mask", "zero"), ("mask", "roi_mean"), ("crop", "zero"), ("crop", "roi_mean")])
def test_pixels_outside_the_roi_cannot_change_the_prediction(mode, fill):
    strategy = create_strategy("roi_input", mode=mode, fill=fill)
    net = _net(strategy)
    batch = _probe_batch()
    outside = _outside(batch, strategy)
    assert outside.float().mean() > 0.5  # most of the frame is outside the lesion's ROI

    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(batch["image"].shape, generator=gen) * 3
    perturbed = dict(batch, image=torch.where(outside, batch["image"] + noise, batch["image"]))
    with torch.no_grad():
        ref = net(strategy.transform_batch(batch, TEST))["logits"]
        out = net(strategy.transform_batch(perturbed, TEST))["logits"]
        # the raw network, without the ROI, does react to the same perturbation
        raw_ref, raw_out = net(batch)["logits"], net(perturbed)["logits"]
    assert torch.equal(ref, out)
    assert (raw_ref - raw_out).abs().max() > 1e-3

    inside = dict(batch, image=torch.where(~outside, batch["image"] + noise, batch["image"]))
    with torch.no_grad():
        moved = net(strategy.transform_batch(inside, TEST))["logits"]
    assert (moved - ref).abs().max() > 1e-3  # what is inside still matters


@pytest.mark.parametrize("mode", ["mask", "crop"])
def test_the_shortcut_marker_is_removed_by_the_roi(mode):
    strategy = create_strategy("roi_input", mode=mode)
    batch = _probe_batch(32)
    present = torch.from_numpy(marker_present(batch["raw"], PROBE_OPTS))
    assert present.any() and (~present).any()
    erased = batch["image"].clone()
    erased[:, :, :4, :4] = -1.0  # the marker square painted black on every image
    assert not torch.equal(erased, batch["image"])
    a = strategy.transform_batch(batch, TRAIN)["image"]
    b = strategy.transform_batch(dict(batch, image=erased), TRAIN)["image"]
    assert torch.equal(a, b)  # the network cannot tell whether the marker was there
    if mode == "mask":
        assert torch.equal(a[:, :, :4, :4], torch.zeros_like(a[:, :, :4, :4]))


def test_crop_mode_zooms_on_the_lesion_and_moves_the_mask_with_it():
    strategy = create_strategy("roi_input", mode="crop", margin=0.0, min_crop=0.0)
    batch = _probe_batch(8)
    out = strategy.transform_batch(batch, TEST)
    frac_before = batch["mask"].float().flatten(1).mean(1)
    frac_after = out["mask"].float().flatten(1).mean(1)
    assert (frac_after > 2 * frac_before).all()  # the lesion fills much more of the frame
    box = out["bbox"]
    # the lesion's longer side now spans (nearly) the whole window
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    assert (side >= 60).all()
    # aspect ratio is kept: taller-than-wide stays taller-than-wide
    b0 = batch["bbox"]
    tall_before = (b0[:, 3] - b0[:, 1]) > (b0[:, 2] - b0[:, 0]) + 2
    tall_after = (box[:, 3] - box[:, 1]) > (box[:, 2] - box[:, 0])
    assert torch.equal(tall_before & tall_after, tall_before)


def test_images_without_a_lesion_keep_the_whole_image():
    strategy = create_strategy("roi_input", mode="mask")
    batch = _probe_batch(4)
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["bbox"] = box_from_mask(batch["mask"])
    assert torch.equal(strategy.transform_batch(batch, TEST)["image"], batch["image"])
    crop = create_strategy("roi_input", mode="crop")
    assert torch.allclose(crop.transform_batch(batch, TEST)["image"], batch["image"], atol=1e-5)


def test_roi_predictor_learns_the_lesion_and_is_used_at_test_time_only():
    # 32 px probe images keep the pre-stage fast; the predictor is fully convolutional
    train = generate_split(256, size=32, split="train", options=PROBE_OPTS)
    val = generate_split(64, size=32, split="val", options=PROBE_OPTS)
    net = train_roi_predictor(train.image, train.extras["mask"], mean=0.5, std=0.5, seed=0, epochs=6)
    ev = evaluate_predictor(net, val.image, val.extras["mask"], mean=0.5, std=0.5)
    untrained = evaluate_predictor(ROIPredictor(1), val.image, val.extras["mask"], mean=0.5, std=0.5)
    assert ev["dice"] > 0.4 and ev["dice"] > untrained["dice"] + 0.25

    strategy = create_strategy("roi_input", mode="mask", test_roi="predicted")
    strategy.predictor = net.requires_grad_(False)
    mask = torch.from_numpy(val.extras["mask"][:16])
    batch = {"image": normalize(torch.from_numpy(val.image[:16]), 0.5, 0.5), "mask": mask, "bbox": box_from_mask(mask)}
    no_truth = {"image": batch["image"]}
    test_img = strategy.transform_batch(no_truth, TEST)["image"]  # needs no ground truth
    assert torch.equal(strategy.transform_batch(batch, VAL)["image"], test_img)
    given = create_strategy("roi_input", mode="mask").transform_batch(batch, TEST)["image"]
    assert not torch.equal(test_img, given)
    # training always uses the ground-truth region
    assert torch.equal(strategy.transform_batch(batch, TRAIN)["image"], given)
    # the marker corner lies outside the predicted region as well
    assert (test_img[:, :, :4, :4] == 0).all()
    cov = strategy.transform_batch(batch, TEST)["roi_coverage"]
    assert cov.mean() > 0.5  # most of each true lesion is inside the predicted region


def test_predicted_region_keeps_the_largest_component():
    prob = torch.zeros(2, 1, 16, 16)
    prob[0, 0, 2:8, 2:8] = 0.9
    prob[0, 0, 12, 12] = 0.9  # a speck
    prob[1, 0, 5, 5] = 0.3  # nothing above 0.5: the pixels above half the maximum
    region = predicted_region(prob)
    assert region[0].sum() == 36 and region[0, 0, 12, 12] == 0
    assert region[1].sum() == 1 and region[1, 0, 5, 5] == 1


def test_tiny_run_states_the_test_roi_and_logs_coverage(tiny_run):
    metrics, run_dir = tiny_run("strategy=roi_input", "strategy.options.mode=crop")
    for f in ("config.yaml", "metrics.json", "metadata.json", "predictions.csv"):
        assert (run_dir / f).exists(), f
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["test_roi"] == "given" and meta["train_roi"] == "given" and "ground-truth" in meta["roi_claim"]
    assert metrics["test/roi_coverage"] == pytest.approx(1.0)
    assert 0.0 <= metrics["test/attention_overlap"] <= 1.0
    assert np.isfinite(metrics["test/auroc"])


def test_tiny_run_with_the_predicted_roi(tiny_run):
    """The pre-stage inside a run: the predictor is trained (and cached) in build_net, moves with
    the model, and only the ROI it predicts reaches the network at val/test time."""
    metrics, run_dir = tiny_run("strategy=roi_input_predicted", "strategy.options.predictor_epochs=2")
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["test_roi"] == "predicted" and "predicted" in meta["roi_claim"]
    stats = meta["roi_predictor"]
    assert 0.0 <= stats["val_dice"] <= 1.0 and stats["trained_on"] == "train split masks"
    assert stats["cache"].endswith(".pt") and json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/roi_coverage"] <= 1.0 and np.isfinite(metrics["test/auroc"])


def _predicted_region_reference(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The former per-image scipy loop, kept as the reference for the batched version."""
    from scipy import ndimage

    p = prob.detach().float().cpu().numpy()[:, 0]
    out = np.zeros_like(p, dtype=np.float32)
    for i, pi in enumerate(p):
        fg = pi > threshold
        if not fg.any():
            fg = pi >= 0.5 * pi.max()
        lab, n = ndimage.label(fg, structure=np.ones((3, 3)))
        if n > 1:
            sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
            fg = lab == (1 + int(np.argmax(sizes)))
        out[i] = fg
    return torch.from_numpy(out)[:, None]


@pytest.mark.parametrize("size", [16, 29, 64])
def test_batched_predicted_region_equals_the_per_image_loop(size):
    """Random maps (many components, size ties, nothing above the threshold, all zero) give the
    same region as scipy image by image; blurred maps too (few large blobs)."""
    gen = torch.Generator().manual_seed(size)
    noise = torch.rand(24, 1, size, size, generator=gen)
    blurred = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    blurred = (blurred - blurred.amin()) / (blurred.amax() - blurred.amin())
    noise[0] = 0.0  # all zero: the fallback keeps every pixel
    noise[1] *= 0.4  # nothing passes 0.5: pixels above half the maximum
    noise[2] = 0.0
    noise[2, 0, 1:3, 1:3] = noise[2, 0, 6:8, 6:8] = 0.9  # two equal islands: the first wins
    for prob in (noise, blurred):
        torch.testing.assert_close(predicted_region(prob), _predicted_region_reference(prob), rtol=0, atol=0)


def test_pre_stage_trains_on_the_context_device_and_caches_cpu_tensors(tmp_path, monkeypatch):
    import hashlib
    import json as json_module

    from dkbench.strategies.catalogue import roi_input as module

    arrays = _arrays(16, 32)
    seen = []

    def train_spy(*args, **kwargs):
        seen.append(("train", kwargs["device"]))
        return train_roi_predictor(*args, **kwargs)

    def evaluate_spy(*args, **kwargs):
        seen.append(("evaluate", kwargs["device"]))
        return evaluate_predictor(*args, **kwargs)

    monkeypatch.setattr(module, "train_roi_predictor", train_spy)
    monkeypatch.setattr(module, "evaluate_predictor", evaluate_spy)
    device = torch.device("cpu")

    def build():
        strategy = create_strategy("roi_input", test_roi="predicted", predictor_epochs=1)
        net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=_make_backbone, cache_dir=tmp_path,
                                              seed=0, device=device))
        return strategy, net

    strategy, net = build()
    assert seen == [("train", device), ("evaluate", device)]
    assert all(p.device.type == "cpu" for p in strategy.predictor.parameters())
    # a frozen submodule of the strategy: in its state_dict (checkpoints), never trained, and
    # kept in eval mode when the run switches the model to training mode
    assert "predictor.out.weight" in strategy.state_dict()
    assert not any(p.requires_grad for p in strategy.predictor.parameters())
    assert not set(map(id, strategy.parameters())) & set(map(id, net.parameters()))
    strategy.train()
    assert strategy.training and not strategy.predictor.training
    # the cache file: the key of earlier versions, written atomically (no temporary file left)
    payload = {"version": module.PREDICTOR_VERSION, "dataset": SPEC.name, "checksum": arrays.checksum, "seed": 0,
               "mean": 0.5, "std": 0.5, "epochs": 1, "width": 16, "lr": 2e-3, "batch_size": 32}
    key = hashlib.sha256(json_module.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    (cached,) = (tmp_path / "roi_input").glob("*.pt")
    assert cached.name == f"{SPEC.name}-{key}.pt"
    assert not list((tmp_path / "roi_input").glob("*.tmp")) and not list((tmp_path / "roi_input").glob(".*"))
    state = torch.load(cached, weights_only=True)["state_dict"]  # no map_location: as saved
    assert state and all(v.device.type == "cpu" for v in state.values())
    # the same seed trains the same weights whichever way the device is named (CPU generators)
    again = train_roi_predictor(arrays.splits["train"].image, arrays.splits["train"].extras["mask"], mean=0.5,
                                std=0.5, seed=0, epochs=1, device="cpu")
    for key, value in strategy.predictor.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[key])
    # a second build loads the cached predictor (weights only), trains nothing, same stats
    loaded, _ = build()
    assert len(seen) == 2 and loaded.metadata()["roi_predictor"] == strategy.metadata()["roi_predictor"]
    for key, value in strategy.predictor.state_dict().items():
        assert torch.equal(value, loaded.predictor.state_dict()[key])


@pytest.mark.parametrize("mode,region", [("mask", "mask"), ("mask", "bbox"), ("crop", "mask")])
def test_a_training_batch_is_reduced_without_host_reads(monkeypatch, mode, region):
    """Training uses the given ROI: mask, box or crop, all device-side tensor ops."""
    from tests.unit.test_strategy_global_local import no_host_reads

    batch = _probe_batch(8)
    batch.pop("raw")
    strategy = create_strategy("roi_input", mode=mode, region=region, fill="roi_mean")
    with no_host_reads(monkeypatch):
        out = strategy.transform_batch(batch, TRAIN)
    assert out["image"].shape == batch["image"].shape
