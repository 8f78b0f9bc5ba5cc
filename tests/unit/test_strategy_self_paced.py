"""`self_paced`: per-sample weights follow the current loss and a threshold λ that grows per
epoch; in hard mode the samples above λ contribute no gradient."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dkbench.data.spec import DatasetSpec
from dkbench.strategies import StepContext, create_strategy

LOSSES = torch.tensor([0.1, 0.5, 0.9, 1.3])  # plain mean: 0.7
SPEC = DatasetSpec(name="plain", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=28)


def _step(stage="train", epoch=0):
    return StepContext.for_stage(stage, SPEC, epoch=epoch, max_epochs=10)


def _start(strategy, epoch):
    """What the module does at an epoch start; returns the step context of that epoch."""
    strategy.on_train_epoch_start(epoch, 10)
    return _step(epoch=epoch)


def _terms(strategy, losses, step=None):
    return strategy.loss_terms(losses, {}, {}, step or _step())["task"]


def test_hard_weights_by_hand():
    s = create_strategy("self_paced", regime="hard", lambda0=0.7, growth=1.5)
    step = _start(s, 0)
    assert _terms(s, LOSSES, step).item() == pytest.approx((0.1 + 0.5) / 2)  # v = [1, 1, 0, 0]
    m = s.extra_metrics({}, {}, step)
    assert m["spl_weight"].item() == pytest.approx(0.5) and m["spl_lambda"].item() == pytest.approx(0.7)
    step = _start(s, 1)  # λ = 0.7 · 1.5 = 1.05: the 0.9 sample joins
    assert _terms(s, LOSSES, step).item() == pytest.approx((0.1 + 0.5 + 0.9) / 3)
    assert s.extra_metrics({}, {}, step)["spl_weight"].item() == pytest.approx(0.75)
    step = _start(s, 2)  # λ = 1.575: everything
    assert _terms(s, LOSSES, step).item() == pytest.approx(0.7)
    # strict threshold: a loss equal to λ is excluded
    s2 = create_strategy("self_paced", regime="hard", lambda0=0.5)
    assert _terms(s2, LOSSES).item() == pytest.approx(0.1)


def test_linear_weights_by_hand():
    s = create_strategy("self_paced", regime="linear", lambda0=1.0, growth=2.0)
    # v = 1 - l/λ = [0.9, 0.5, 0.1, 0 (clipped)], Σv = 1.5
    expected = (0.9 * 0.1 + 0.5 * 0.5 + 0.1 * 0.9) / 1.5
    assert _terms(s, LOSSES).item() == pytest.approx(expected)
    assert s.extra_metrics({}, {}, _step())["spl_weight"].item() == pytest.approx(1.5 / 4)
    assert s.extra_metrics({}, {}, _step())["spl_selected"].item() == pytest.approx(0.75)
    step = _start(s, 1)  # λ = 2: v = [0.95, 0.75, 0.55, 0.35], Σv = 2.6
    expected = (0.95 * 0.1 + 0.75 * 0.5 + 0.55 * 0.9 + 0.35 * 1.3) / 2.6
    assert _terms(s, LOSSES, step).item() == pytest.approx(expected)


def test_options_are_checked():
    for bad in ({"growth": 0.9}, {"start_quantile": 0.0}, {"regime": "soft"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_strategy("self_paced", **bad)


def test_small_total_weight_is_divided_by_one():
    s = create_strategy("self_paced", regime="linear", lambda0=0.2)
    # v = [0.5, 0, 0, 0]: Σv = 0.5 < 1 → denominator 1
    assert _terms(s, LOSSES).item() == pytest.approx(0.5 * 0.1)


def test_lambda_starts_at_batch_quantile_and_grows_per_epoch():
    s = create_strategy("self_paced", regime="hard", start_quantile=0.5, growth=1.25)
    assert s.threshold is None and s.metadata()["lambda0"] is None  # not known before batch 0
    step = _start(s, 0)
    _terms(s, LOSSES, step)
    lam0 = torch.quantile(LOSSES, 0.5).item()  # 0.7
    assert float(s.lambda0) == pytest.approx(lam0) and s.threshold == pytest.approx(lam0)
    _terms(s, LOSSES * 10, step)  # later batches do not move λ_0
    assert float(s.lambda0) == pytest.approx(lam0)
    for epoch in range(1, 4):
        step = _start(s, epoch)
        _terms(s, LOSSES, step)
        assert s.threshold == pytest.approx(lam0 * 1.25**epoch)
        assert s.extra_metrics({}, {}, step)["spl_lambda"].item() == pytest.approx(lam0 * 1.25**epoch)
    assert s.metadata()["lambda_per_epoch"] == pytest.approx({str(e): lam0 * 1.25**e for e in range(4)})


def test_lambda0_and_epoch_survive_a_checkpoint():
    """A resumed run continues the schedule: λ_0 of the first run's batch 0 and the epoch are
    buffers, restored into a fresh strategy, whose next batch does not re-estimate λ_0."""
    s = create_strategy("self_paced", start_quantile=0.5, growth=1.25)
    for epoch in range(3):
        _terms(s, LOSSES, _start(s, epoch))
    state = s.state_dict()
    assert set(state) >= {"lambda0", "epoch"}
    assert float(state["lambda0"]) == pytest.approx(0.7) and int(state["epoch"]) == 2

    resumed = create_strategy("self_paced", start_quantile=0.5, growth=1.25)
    assert math.isnan(float(resumed.lambda0))  # "not known yet"
    resumed.load_state_dict(state)
    assert float(resumed.lambda0) == float(s.lambda0) and int(resumed.epoch) == 2
    assert resumed.threshold == s.threshold == pytest.approx(0.7 * 1.25**2)
    _terms(resumed, LOSSES * 10, _start(resumed, 3))  # a first batch after resuming: λ_0 stays
    assert float(resumed.lambda0) == float(s.lambda0)
    assert resumed.metadata()["lambda_per_epoch"] == pytest.approx({str(e): 0.7 * 1.25**e for e in range(4)})


def test_evaluation_uses_the_plain_mean():
    s = create_strategy("self_paced", regime="hard", lambda0=0.3)
    assert _terms(s, LOSSES, _step("val")).item() == pytest.approx(0.7)
    assert s.extra_metrics({}, {}, _step("val")) == {}


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


@pytest.mark.parametrize("regime", ["hard", "linear"])
def test_training_steps_read_nothing_back_from_the_device(monkeypatch, regime):
    """λ_0 is estimated and kept on the device: no step (the first included) waits for it."""
    from tests.unit.test_strategy_global_local import no_host_reads

    s = create_strategy("self_paced", regime=regime)
    with no_host_reads(monkeypatch):
        for epoch in range(2):
            step = _start(s, epoch)
            _terms(s, LOSSES, step)
            s.extra_metrics({}, {}, step)
    assert s.threshold == pytest.approx(0.7 * 1.2)


def test_metadata_lists_every_epoch_trained_after_the_best_weights_are_restored():
    """Before testing, the runner loads the selected epoch's module state (strategy buffers
    included); the λ schedule in metadata.json still covers every epoch trained."""
    s = create_strategy("self_paced", lambda0=0.5, growth=2.0)
    _terms(s, LOSSES, _start(s, 0))
    best = {k: v.clone() for k, v in s.state_dict().items()}
    for epoch in (1, 2):
        _terms(s, LOSSES, _start(s, epoch))
    s.load_state_dict(best)
    assert int(s.epoch) == 0
    assert s.metadata()["lambda_per_epoch"] == pytest.approx({"0": 0.5, "1": 1.0, "2": 2.0})
