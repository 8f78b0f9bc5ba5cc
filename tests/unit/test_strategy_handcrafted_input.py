"""handcrafted_input: radiomics feature maps enter as extra input channels (SURVEY.md family E).
The channel count and content match the extractor, the maps are standardised with train
statistics and follow the augmentation of the batch."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.data.transforms import AugmentConfig, augment_batch
from dkbench.features import MAP_NAMES, feature_maps
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy
from dkbench.strategies.catalogue.handcrafted_input import MapName


@pytest.fixture(scope="module")
def probe():
    cfg = compose_config(["dataset=probe", "dataset.options.n_train=32", "dataset.options.n_val=16",
                          "dataset.options.n_test=16"])
    return load_dataset(cfg.dataset, cfg.paths.data_dir)


def _built(arrays, tmp_path, **options):
    """The strategy after `build_net` (train statistics computed) and the network it built."""
    strategy = create_strategy("handcrafted_input", **options)
    spec = arrays.spec
    kwargs = {"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims, "img_size": spec.size,
              **strategy.backbone_kwargs(spec)}  # the run's factory applies the strategy's overrides

    def make(**overrides):
        return create_backbone("tinycnn", **{**kwargs, **overrides})

    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=tmp_path, seed=0,
                                          config={"data": {"mean": 0.5, "std": 0.5}}))
    return strategy, net


def _step(stage, arrays):
    return StepContext.for_stage(stage, arrays.spec)


def _batch(arrays, split="val", n=6):
    return InMemoryDataset(arrays.splits[split], "binary", 0.5, 0.5).__getitems__(list(range(n)))


def test_channels_are_the_image_then_the_extractors_maps_standardised_on_train(probe, tmp_path):
    strategy, net = _built(probe, tmp_path)
    assert strategy.backbone_kwargs(probe.spec) == {"in_chans": 1 + len(MAP_NAMES)}
    batch = _batch(probe)
    out = strategy.transform_batch(batch, _step("val", probe))
    assert out["image"].shape == (6, 1 + len(MAP_NAMES), 64, 64)
    torch.testing.assert_close(out["image"][:, :1], batch["image"])  # the image is untouched, first
    raw_val = feature_maps(torch.from_numpy(probe.splits["val"].image[:6]).float())  # the extractor on raw uint8
    # train statistics, computed here independently from the train split's maps
    train_maps = feature_maps(torch.from_numpy(probe.splits["train"].image).float()).double()
    mean, std = train_maps.mean((0, 2, 3)), train_maps.std((0, 2, 3), unbiased=False)
    torch.testing.assert_close(strategy.map_mean.flatten().double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(strategy.map_std.flatten().double(), std, rtol=1e-4, atol=1e-6)
    expected = (raw_val.double() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(out["image"][:, 1:].double(), expected, rtol=1e-4, atol=1e-4)
    # the network build_net made (with the strategy's backbone kwargs) sees all channels
    assert net(out)["embedding"].shape == (6, net.backbone.num_features)
    assert json.dumps(strategy.metadata())  # serialisable, lists channel order
    assert strategy.metadata()["channels"] == ["image", *MAP_NAMES]


def test_map_statistics_are_buffers_in_the_state_dict(probe, tmp_path):
    """Saved in checkpoints and moved with the module: a resumed run standardises as before."""
    strategy, _ = _built(probe, tmp_path)
    state = strategy.state_dict()
    assert {"map_mean", "map_std"} <= set(state)
    torch.testing.assert_close(state["map_mean"], strategy.map_mean, rtol=0, atol=0)
    assert state["map_std"].shape == (1, len(MAP_NAMES), 1, 1)


def test_a_subset_of_maps_gives_those_channels_in_order(probe, tmp_path):
    strategy, _ = _built(probe, tmp_path, maps=["local_entropy", "sobel"])
    assert strategy.backbone_kwargs(probe.spec) == {"in_chans": 3}
    full, _ = _built(probe, tmp_path)
    batch = _batch(probe)
    step = _step("test", probe)
    sub, all_maps = strategy.transform_batch(batch, step)["image"], full.transform_batch(batch, step)["image"]
    torch.testing.assert_close(sub[:, 1:], all_maps[:, [3, 1]])
    with pytest.raises(ValueError, match=r"option 'maps' must be"):
        create_strategy("handcrafted_input", maps=["nope"])
    with pytest.raises(ValueError, match=r"option 'maps' must be a non-empty subset"):
        create_strategy("handcrafted_input", maps=[])
    assert get_args(MapName) == MAP_NAMES  # the option's choices are the extractor's maps
    vol = spec_from_config(compose_config(["dataset=adrenalmnist3d"]).dataset)
    assert "2D" in create_strategy("handcrafted_input").incompatibility(vol)


def test_maps_follow_the_augmentation(probe, tmp_path):
    """Computed from the batch after augmentation: the maps of a flipped image are the flipped maps."""
    strategy, _ = _built(probe, tmp_path, maps=["sobel", "local_std", "local_entropy"])
    batch = _batch(probe, "train", 8)
    flipped = augment_batch(batch, AugmentConfig(hflip=True), "binary", torch.Generator().manual_seed(0))
    which = [not torch.equal(flipped["image"][i], batch["image"][i]) for i in range(8)]
    assert any(which) and not all(which)
    a = strategy.transform_batch(flipped, _step("train", probe))["image"]
    b = strategy.transform_batch(batch, _step("train", probe))["image"]
    for i in range(8):  # a map looked up by sample index would not be flipped
        torch.testing.assert_close(a[i], b[i].flip(-1) if which[i] else b[i], atol=1e-5, rtol=1e-5)


def test_end_to_end_probe_run(tiny_run):
    metrics, run = tiny_run("strategy=handcrafted_input")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run / name).exists(), name
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    meta = json.loads((run / "metadata.json").read_text())["strategy"]
    assert meta["channels"] == ["image", *MAP_NAMES] and len(meta["map_standardisation"]["mean"]) == 4
    stem = torch.load(run / "checkpoints" / "best_weights.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert stem["net.backbone.blocks.0.0.weight"].shape[1] == 1 + len(MAP_NAMES)  # the CNN was fed 5 channels


def test_a_detector_reads_the_maps_through_its_feature_pyramid(tmp_path):
    """Detection (issue 18): the detector is built on a backbone with image + map channels, and a
    batch with the maps appended trains it (finite per-image losses, none for a negative image)."""
    from dkbench.models.detector import DetectorNet

    cfg = compose_config(["dataset=probe_det", "dataset.options.n_train=24", "dataset.options.n_val=8",
                          "dataset.options.n_test=8"])
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    strategy = create_strategy("handcrafted_input")
    assert strategy.incompatibility(arrays.spec) is None
    spec = arrays.spec

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": spec.in_chans, "spatial_dims": 2, "img_size": spec.size,
                                             **strategy.backbone_kwargs(spec), **overrides})

    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=tmp_path,
                                          config={"data": {"mean": 0.5, "std": 0.5}, "model": dict(cfg.model)}))
    assert isinstance(net, DetectorNet)
    first_conv = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1 + len(MAP_NAMES)
    batch = InMemoryDataset(arrays.splits["train"], "detection", 0.5, 0.5).__getitems__(list(range(8)))
    out = strategy.transform_batch(batch, StepContext.for_stage("train", spec))
    assert out["image"].shape[1] == 1 + len(MAP_NAMES)
    torch.testing.assert_close(out["image"][:, 1:], strategy.standardised_maps(batch["image"]))
    net.train()
    cls_loss, box_loss = net.per_image_loss(net(out), out["label"])
    negatives = ~torch.isfinite(out["label"]).all(-1).any(-1)
    assert torch.isfinite(cls_loss).all() and negatives.any() and (box_loss[negatives] == 0).all()
