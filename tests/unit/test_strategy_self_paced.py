"""`self_paced`: per-sample weights follow the current loss and a threshold λ that grows per
epoch; in hard mode the samples above λ contribute no gradient."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dkbench.strategies import create_strategy

LOSSES = torch.tensor([0.1, 0.5, 0.9, 1.3])  # plain mean: 0.7


def _terms(strategy, losses, stage="train"):
    return strategy.loss_terms(losses, {}, {}, stage)["task"]


def test_hard_weights_by_hand():
    s = create_strategy("self_paced", regime="hard", lambda0=0.7, growth=1.5)
    s.on_train_epoch_start(0, 10)
    assert _terms(s, LOSSES).item() == pytest.approx((0.1 + 0.5) / 2)  # v = [1, 1, 0, 0]
    m = s.extra_metrics({}, {}, "train")
    assert m["spl_weight"].item() == pytest.approx(0.5) and m["spl_lambda"].item() == pytest.approx(0.7)
    s.on_train_epoch_start(1, 10)  # λ = 0.7 · 1.5 = 1.05: the 0.9 sample joins
    assert _terms(s, LOSSES).item() == pytest.approx((0.1 + 0.5 + 0.9) / 3)
    assert s.extra_metrics({}, {}, "train")["spl_weight"].item() == pytest.approx(0.75)
    s.on_train_epoch_start(2, 10)  # λ = 1.575: everything
    assert _terms(s, LOSSES).item() == pytest.approx(0.7)
    # strict threshold: a loss equal to λ is excluded
    s2 = create_strategy("self_paced", regime="hard", lambda0=0.5)
    assert _terms(s2, LOSSES).item() == pytest.approx(0.1)


def test_linear_weights_by_hand():
    s = create_strategy("self_paced", regime="linear", lambda0=1.0, growth=2.0)
    # v = 1 - l/λ = [0.9, 0.5, 0.1, 0 (clipped)], Σv = 1.5
    expected = (0.9 * 0.1 + 0.5 * 0.5 + 0.1 * 0.9) / 1.5
    assert _terms(s, LOSSES).item() == pytest.approx(expected)
    assert s.extra_metrics({}, {}, "train")["spl_weight"].item() == pytest.approx(1.5 / 4)
    assert s.extra_metrics({}, {}, "train")["spl_selected"].item() == pytest.approx(0.75)
    s.on_train_epoch_start(1, 10)  # λ = 2: v = [0.95, 0.75, 0.55, 0.35], Σv = 2.6
    expected = (0.95 * 0.1 + 0.75 * 0.5 + 0.55 * 0.9 + 0.35 * 1.3) / 2.6
    assert _terms(s, LOSSES).item() == pytest.approx(expected)


def test_small_total_weight_is_divided_by_one():
    s = create_strategy("self_paced", regime="linear", lambda0=0.2)
    # v = [0.5, 0, 0, 0]: Σv = 0.5 < 1 → denominator 1
    assert _terms(s, LOSSES).item() == pytest.approx(0.5 * 0.1)


def test_lambda_starts_at_batch_quantile_and_grows_per_epoch():
    s = create_strategy("self_paced", regime="hard", start_quantile=0.5, growth=1.25)
    s.on_train_epoch_start(0, 5)
    _terms(s, LOSSES)
    lam0 = torch.quantile(LOSSES, 0.5).item()  # 0.7
    assert s.lambda0 == pytest.approx(lam0) and s.threshold == pytest.approx(lam0)
    _terms(s, LOSSES * 10)  # later batches do not move λ_0
    assert s.lambda0 == pytest.approx(lam0)
    for epoch in range(1, 4):
        s.on_train_epoch_start(epoch, 5)
        _terms(s, LOSSES)
        assert s.threshold == pytest.approx(lam0 * 1.25**epoch)
    assert s.metadata()["lambda_per_epoch"] == pytest.approx({str(e): lam0 * 1.25**e for e in range(4)})


def test_evaluation_uses_the_plain_mean():
    s = create_strategy("self_paced", regime="hard", lambda0=0.3)
    assert _terms(s, LOSSES, "val").item() == pytest.approx(0.7)
    assert s.extra_metrics({}, {}, "val") == {}


def test_hard_mode_high_loss_samples_give_zero_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    losses = F.cross_entropy(model(x), y, reduction="none")
    lam = losses.detach().median().item()  # about half the samples are above λ
    s = create_strategy("self_paced", regime="hard", lambda0=lam)
    _terms(s, losses).backward()
    easy = losses.detach() < lam
    assert 0 < easy.sum() < 8
    assert torch.all(x.grad[~easy] == 0)  # hard samples: no gradient at all
    assert torch.all(x.grad[easy].abs().sum(1) > 0)
    # the parameter gradient is the mean-loss gradient of the easy samples alone
    got = model.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(x.detach()[easy]), y[easy]).backward()
    torch.testing.assert_close(got, model.weight.grad)


def test_probe_run_logs_weights_and_lambda(tiny_run):
    metrics, run = tiny_run("strategy=self_paced", "trainer.max_epochs=2", "strategy.options.growth=1.5")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run / name).exists(), name
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    log = pd.read_csv(run / "csv" / "metrics.csv")
    rows = log.dropna(subset=["train/spl_lambda"]).sort_values("epoch")
    lam = rows["train/spl_lambda"].tolist()
    assert len(lam) == 2 and lam[1] == pytest.approx(1.5 * lam[0], rel=1e-5)
    weights = rows["train/spl_weight"].tolist()
    assert 0.0 < weights[0] < 1.0  # hard regime at the batch-0 median: some samples left out
    meta = json.loads((run / "metadata.json").read_text())["strategy"]
    assert meta["lambda0"] == pytest.approx(lam[0], rel=1e-5) and meta["options"]["regime"] == "hard"
