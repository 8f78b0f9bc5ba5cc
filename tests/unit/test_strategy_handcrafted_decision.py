"""handcrafted_decision: a classical classifier on the radiomics features, its probabilities
combined with the CNN's by the stated rule (SURVEY.md family E, decision-level fusion)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import load_dataset
from dkbench.features import RadiomicsConfig, load_or_extract
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy


@pytest.fixture(scope="module")
def probe():
    cfg = compose_config(["dataset=probe", "dataset.options.n_train=60", "dataset.options.n_val=30",
                          "dataset.options.n_test=30"])
    return load_dataset(cfg.dataset, cfg.paths.data_dir)


def _built(arrays, cache, **options):
    """The strategy after `build_net` (classifier fitted) and its CNN, in eval mode."""
    strategy = create_strategy("handcrafted_decision", **options)
    spec = arrays.spec

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims,
                                             "img_size": spec.size, **overrides})

    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=cache, seed=0,
                                          config={"data": {"mean": 0.5, "std": 0.5, "eval_batch_size": 16}}))
    return strategy, net.eval()


def _evaluate(strategy, net, arrays, split, indices):
    step = StepContext.for_stage(split, arrays.spec, net=net)
    batch = InMemoryDataset(arrays.splits[split], "binary", 0.5, 0.5).__getitems__(indices)
    batch = strategy.transform_batch(batch, step)
    return batch, strategy.postprocess(net(batch), batch, step)


def test_classifier_is_trained_on_train_features(probe, tmp_path):
    strategy, _ = _built(probe, tmp_path)
    raw = load_or_extract(probe, RadiomicsConfig(use_mask=True), tmp_path).splits
    mean, std = raw["train"].astype(np.float64).mean(0), raw["train"].astype(np.float64).std(0)
    std[std < 1e-8] = 1
    ref = LogisticRegression(C=1.0, max_iter=5000).fit((raw["train"] - mean) / std, probe.splits["train"].label)
    np.testing.assert_allclose(strategy.clf_probs_test.numpy(), ref.predict_proba((raw["test"] - mean) / std), atol=1e-5)
    assert strategy.clf_auroc["train"] > 0.8  # the probe's lesion shape is in the features


def test_classifier_probabilities_are_buffers_in_the_state_dict(probe, tmp_path):
    """What val/test read is saved in checkpoints and moved with the module (never per batch)."""
    strategy, _ = _built(probe, tmp_path)
    state = strategy.state_dict()
    assert {"clf_probs_train", "clf_probs_val", "clf_probs_test", "feature_mean", "feature_std"} <= set(state)
    for split in ("train", "val", "test"):
        assert state[f"clf_probs_{split}"].shape == (len(probe.splits[split]), 2)
    torch.testing.assert_close(state["clf_probs_val"].sum(1), torch.ones(len(probe.splits["val"])))


def test_average_output_is_the_stated_combination(probe, tmp_path):
    strategy, net = _built(probe, tmp_path, alpha=0.3)
    with torch.no_grad():
        batch, out = _evaluate(strategy, net, probe, "val", [4, 2, 9, 0])
    cnn = torch.softmax(out["logits"], 1)
    clf = strategy.clf_probs_val[[4, 2, 9, 0]]
    torch.testing.assert_close(out["probs"], 0.7 * cnn + 0.3 * clf)
    torch.testing.assert_close(out["cnn_probs"], cnn)
    torch.testing.assert_close(out["clf_probs"], clf)
    assert not torch.allclose(out["probs"], cnn)  # the classifier changed the decision
    assert "0.3" in strategy.metadata()["decision_fusion"]["rule"]
    with pytest.raises(ValueError, match=r"option 'alpha' must be >= 0 and <= 1, got 1.5"):
        create_strategy("handcrafted_decision", alpha=1.5)
    with pytest.raises(ValueError, match=r"option 'combine' must be one of \['average', 'stacking'\]"):
        create_strategy("handcrafted_decision", combine="vote")


def test_stacking_is_a_logistic_regression_fitted_on_validation(probe, tmp_path):
    strategy, net = _built(probe, tmp_path, combine="stacking")
    with torch.no_grad():
        _, val_out = _evaluate(strategy, net, probe, "val", [0, 1, 2])
        _, out = _evaluate(strategy, net, probe, "test", [3, 8, 5])
        x_val = (torch.from_numpy(probe.splits["val"].image).float() / 255 - 0.5) / 0.5
        cnn_val = torch.softmax(net({"image": x_val})["logits"], 1).numpy()
    torch.testing.assert_close(val_out["probs"], 0.5 * val_out["cnn_probs"] + 0.5 * val_out["clf_probs"])  # val: average

    def logit(p):
        p = np.clip(p[:, 1:2].astype(np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    x = np.concatenate([logit(cnn_val), logit(strategy.clf_probs_val.numpy())], 1)
    stacker = LogisticRegression(max_iter=5000).fit(x, probe.splits["val"].label)
    x_test = np.concatenate([logit(out["cnn_probs"].numpy()), logit(out["clf_probs"].numpy())], 1)
    np.testing.assert_allclose(out["probs"].numpy(), stacker.predict_proba(x_test), atol=1e-5)
    assert "stacker" in strategy.metadata()["decision_fusion"]
    # refitted when the weights change (e.g. the best checkpoint is loaded for testing)
    first = strategy.stacker
    with torch.no_grad():
        net.head.weight.add_(1.0)
        _evaluate(strategy, net, probe, "test", [0])
    assert strategy.stacker is not first


def test_end_to_end_probe_run_writes_the_classifiers_probabilities(tiny_run):
    """alpha = 1: the run's predictions are exactly the classifier's test probabilities."""
    metrics, run = tiny_run("strategy=handcrafted_decision", "strategy.options.alpha=1.0")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run / name).exists(), name
    meta = json.loads((run / "metadata.json").read_text())["strategy"]
    assert meta["decision_fusion"]["rule"].startswith("average") and meta["features"]["use_mask"] is True
    preds = pd.read_csv(run / "predictions.csv")
    cfg = compose_config(["dataset=probe", "dataset.options.n_train=128", "dataset.options.n_val=64",
                          "dataset.options.n_test=64"])
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    strategy, _ = _built(arrays, run.parents[4] / "runs" / ".cache")  # the run's cache: no re-extraction
    assert not strategy.cached.computed
    order = {i: k for k, i in enumerate(arrays.splits["test"].ids)}
    clf = strategy.clf_probs_test.numpy()[[order[i] for i in preds["id"]]]
    np.testing.assert_allclose(preds[["prob_0", "prob_1"]].to_numpy(), clf, atol=1e-5)
    assert metrics["test/auroc"] == pytest.approx(roc_auc_score(preds["label"], clf[:, 1]), abs=1e-6)
    assert metrics["test/auroc"] == pytest.approx(meta["decision_fusion"]["classifier_auroc"]["test"], abs=1e-6)
