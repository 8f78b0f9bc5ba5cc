"""handcrafted_feature: the radiomics vector is concatenated with the CNN embedding before the
head (head input = CNN dim + feature dim), standardised with TRAIN statistics only
(SURVEY.md family E, feature-level fusion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.features import RadiomicsConfig, extraction_count, feature_names, load_or_extract
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy


@pytest.fixture(scope="module")
def probe():
    cfg = compose_config(["dataset=probe", "dataset.options.n_train=40", "dataset.options.n_val=20",
                          "dataset.options.n_test=20"])
    return load_dataset(cfg.dataset, cfg.paths.data_dir)


def _built(arrays, cache, **options):
    """The strategy after `build_net` (features cached and standardised) and its network."""
    strategy = create_strategy("handcrafted_feature", **options)
    spec = arrays.spec

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims,
                                             "img_size": spec.size, **overrides})

    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=cache, seed=0))
    return strategy, net


def _batch(arrays, split, indices):
    return InMemoryDataset(arrays.splits[split], "binary", 0.5, 0.5).__getitems__(indices)


def test_head_reads_cnn_embedding_plus_features(probe, tmp_path):
    strategy, net = _built(probe, tmp_path)
    net.eval()
    dim = len(feature_names(RadiomicsConfig(use_mask=True)))  # the probe has masks: shape2D included
    assert strategy.cached.dim == dim == 43
    width = net.backbone.num_features
    assert net.head.in_features == width + dim
    batch = strategy.transform_batch(_batch(probe, "test", [5, 0, 7]), StepContext.for_stage("test", probe.spec))
    out = net(batch)
    assert out["fused"].shape == (3, width + dim)
    torch.testing.assert_close(out["fused"][:, width:], strategy.features_test[[5, 0, 7]])
    # the features reach the logits: other feature values, same image → other logits
    changed = net({**batch, "handcrafted": batch["handcrafted"] + 1.0})
    assert not torch.allclose(changed["logits"], out["logits"])
    torch.testing.assert_close(changed["embedding"], out["embedding"])


def test_standardisation_uses_train_statistics_only(probe, tmp_path):
    strategy, _ = _built(probe, tmp_path)
    raw = load_or_extract(probe, RadiomicsConfig(use_mask=True), tmp_path).splits
    mean, std = raw["train"].astype(np.float64).mean(0), raw["train"].astype(np.float64).std(0)
    std[std < 1e-8] = 1.0
    for split in ("train", "val", "test"):
        table = getattr(strategy, f"features_{split}").numpy()
        np.testing.assert_allclose(table, (raw[split] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(strategy.feature_mean.numpy(), mean)
    np.testing.assert_array_equal(strategy.feature_std.numpy(), std)
    # train is exactly centred; val is not re-centred on its own statistics
    np.testing.assert_allclose(strategy.features_train.numpy().mean(0), 0, atol=1e-5)
    val = strategy.features_val.numpy()
    own = (raw["val"] - raw["val"].mean(0)) / np.where(raw["val"].std(0) < 1e-8, 1, raw["val"].std(0))
    assert np.abs(val - own).max() > 0.1
    # changing val/test data does not change the statistics (they come from train alone)
    probe.splits["val"].image[:] = 255 - probe.splits["val"].image
    try:
        other, _ = _built(probe, tmp_path / "other")
    finally:
        probe.splits["val"].image[:] = 255 - probe.splits["val"].image
    torch.testing.assert_close(other.feature_mean, strategy.feature_mean, rtol=0, atol=0)
    torch.testing.assert_close(other.feature_std, strategy.feature_std, rtol=0, atol=0)


def test_feature_tables_are_buffers_in_the_state_dict(probe, tmp_path):
    """Saved in checkpoints and moved with the module (never per batch)."""
    strategy, _ = _built(probe, tmp_path)
    state = strategy.state_dict()
    assert {"features_train", "features_val", "features_test", "feature_mean", "feature_std"} <= set(state)
    for split in ("train", "val", "test"):
        assert state[f"features_{split}"].shape == (len(probe.splits[split]), 43)
        assert state[f"features_{split}"].dtype == torch.float32


def test_rows_follow_split_and_index(probe, tmp_path):
    strategy, _ = _built(probe, tmp_path, use_mask=False)
    assert strategy.cached.dim == len(feature_names(RadiomicsConfig(use_mask=False)))
    for stage in ("train", "val", "test"):
        batch = strategy.transform_batch(_batch(probe, stage, [3, 1]), StepContext.for_stage(stage, probe.spec))
        torch.testing.assert_close(batch["handcrafted"], getattr(strategy, f"features_{stage}")[[3, 1]])
    breast = spec_from_config(compose_config(["dataset=breastmnist"]).dataset)
    assert create_strategy("handcrafted_feature").incompatibility(breast) is None  # auto: no masks, fine
    assert "mask" in create_strategy("handcrafted_feature", use_mask=True).incompatibility(breast)
    vol = spec_from_config(compose_config(["dataset=adrenalmnist3d"]).dataset)
    assert "2D" in create_strategy("handcrafted_feature").incompatibility(vol)
    with pytest.raises(ValueError, match=r"option 'use_mask' must be"):
        create_strategy("handcrafted_feature", use_mask="sometimes")


def test_end_to_end_probe_run(tiny_run):
    before = extraction_count()
    metrics, run = tiny_run("strategy=handcrafted_feature")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run / name).exists(), name
    meta = json.loads((run / "metadata.json").read_text())["strategy"]["features"]
    assert meta["dim"] == 43 and meta["use_mask"] is True and "GROUND-TRUTH" in meta["masks"]
    assert extraction_count() == before + 1 and not meta["cache_hit"]
    head = torch.load(run / "checkpoints" / "best_weights.pt", map_location="cpu", weights_only=True)["state_dict"]["net.head.weight"]
    assert head.shape == (2, 96 + 43)  # tinycnn embedding (96) + radiomics features (43)


def test_auto_masks_only_when_no_mask_is_empty(tmp_path):
    """probe_3class has lesion-free 'normal' images (empty masks): an empty expert mask would
    reveal the label, so `auto` uses no masks there; `true` forces them and says so."""
    cfg = compose_config(["dataset=probe_3class", "dataset.options.n_train=12", "dataset.options.n_val=6",
                          "dataset.options.n_test=6"])
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    auto, _ = _built(arrays, tmp_path)
    assert auto.use_mask is False and auto.cached.dim == len(feature_names(RadiomicsConfig(use_mask=False)))
    assert "empty" in auto.metadata()["features"]["masks"]
    forced, _ = _built(arrays, tmp_path, use_mask=True)
    assert forced.use_mask is True and "GROUND-TRUTH" in forced.metadata()["features"]["masks"]
    assert forced.metadata()["features"]["names"][-1] == "shape_empty_mask"
