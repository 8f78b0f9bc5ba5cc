"""Checkpoints that cost nothing: best weights in memory and written once, an atomic periodic
last.ckpt, a resume that keeps the best epoch; and the speed presets on tiny probe runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

import dkbench.runner.train as train_mod
from dkbench.runner.callbacks import FailOnNonFiniteLoss
from dkbench.runner.checkpointing import (
    BEST_WEIGHTS,
    LAST,
    BestWeights,
    PeriodicLastCheckpoint,
)

# the lowest validation AUROC is an early epoch on the probe (training raises it), so the best
# epoch is not the last and "tested the best weights" is distinguishable from "tested the last"
EARLY_BEST = ["monitor.metric=val/auroc", "monitor.mode=min", "trainer.max_epochs=4"]


@pytest.fixture
def captured(monkeypatch):
    """The run's BestWeights, task module and datamodule, recorded as train() builds them."""
    seen: dict[str, object] = {"best_saves": 0}

    class RecordingBest(BestWeights):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["best"] = self

        def save(self, path, tested):
            seen["best_saves"] = int(seen["best_saves"]) + 1
            super().save(path, tested)

    class RecordingData(train_mod.DKDataModule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["data"] = self

    real_apply = train_mod.apply_module_settings

    def recording_apply(module, speed, *args, **kwargs):
        seen["module"] = module
        return real_apply(module, speed, *args, **kwargs)

    monkeypatch.setattr(train_mod, "BestWeights", RecordingBest)
    monkeypatch.setattr(train_mod, "DKDataModule", RecordingData)
    monkeypatch.setattr(train_mod, "apply_module_settings", recording_apply)
    return seen


def _retest(module, datamodule, state_dict) -> pd.DataFrame:
    module.load_state_dict(state_dict)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_predictions.reset_index(drop=True)


def test_best_weights_written_once_and_test_uses_them(tiny_run, captured):
    metrics, run = tiny_run(*EARLY_BEST, "checkpoint.last_every_n_epochs=1")
    best: BestWeights = captured["best"]  # type: ignore[assignment]
    sel = metrics["selection"]
    assert sel["checkpoint"] == "best" and sel["best_epoch"] == best.best_epoch < 3
    assert sel["best_score"] == pytest.approx(best.best_score) and sel["monitor"] == "val/auroc"
    assert captured["best_saves"] == 1  # once, at the end — never per improving epoch
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted([LAST, BEST_WEIGHTS])

    saved = torch.load(run / "checkpoints" / BEST_WEIGHTS, map_location="cpu", weights_only=True)
    assert saved["best_epoch"] == sel["best_epoch"] and saved["monitor"] == "val/auroc"
    assert saved["state_dict"].keys() == best.weights.keys()
    for key, tensor in best.weights.items():
        assert torch.equal(saved["state_dict"][key], tensor.cpu()), key

    # predictions.csv comes from the best weights, not from the last epoch's
    csv = pd.read_csv(run / "predictions.csv")
    module, data = captured["module"], captured["data"]
    from_best = _retest(module, data, saved["state_dict"])
    pd.testing.assert_frame_equal(from_best, csv, check_dtype=False, atol=1e-6)
    last = torch.load(run / "checkpoints" / LAST, map_location="cpu", weights_only=False)
    assert last["epoch"] == 3
    from_last = _retest(module, data, last["state_dict"])
    assert not (from_last["prob_1"] - csv["prob_1"]).abs().lt(1e-6).all()


def test_last_ckpt_cadence_and_removal(tiny_run, monkeypatch):
    saves: list[int] = []
    real_save = PeriodicLastCheckpoint.save

    def counting_save(self, trainer):
        saves.append(trainer.current_epoch)
        real_save(self, trainer)

    monkeypatch.setattr(PeriodicLastCheckpoint, "save", counting_save)
    _, run = tiny_run("trainer.max_epochs=5", "checkpoint.last_every_n_epochs=2", "checkpoint.last_every_minutes=null")
    assert saves == [1, 3]
    # tensors and plain containers only: the resume reads it with weights_only=True
    assert torch.load(run / "checkpoints" / LAST, map_location="cpu", weights_only=True)["epoch"] == 3

    saves.clear()
    _, run = tiny_run("trainer.max_epochs=2", "checkpoint.last_every_n_epochs=1", "keep_checkpoints=false", "tag=@gone")
    assert saves == [0, 1] and list((run / "checkpoints").iterdir()) == []


def test_failed_last_ckpt_write_leaves_previous_intact(tiny_run, monkeypatch):
    real = pl.Trainer.save_checkpoint
    calls = {"n": 0}

    def flaky(self, filepath, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # a full disk midway through the second save
            with open(filepath, "wb") as fh:
                fh.write(b"truncated")
            raise OSError(28, "No space left on device")
        return real(self, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", flaky)
    metrics, run = tiny_run("trainer.max_epochs=2", "checkpoint.last_every_n_epochs=1")
    assert calls["n"] == 2 and metrics["epochs_trained"] == 2  # the run went on
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted([LAST, BEST_WEIGHTS])  # no temp file left
    assert torch.load(folder / LAST, map_location="cpu", weights_only=False)["epoch"] == 0  # the first, whole


def test_resume_after_interruption_keeps_best_epoch(tiny_run, monkeypatch, tmp_path):
    overrides = [*EARLY_BEST, "checkpoint.last_every_n_epochs=1"]
    reference, _ = tiny_run(*overrides, "tag=@reference")
    assert reference["selection"]["best_epoch"] <= 1  # saved before the interruption below

    real_end = FailOnNonFiniteLoss.on_train_epoch_end

    def killed_at_epoch_2(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("killed")  # before epoch 2's last.ckpt: the resume starts at epoch 2
        real_end(self, trainer, pl_module)

    monkeypatch.setattr(FailOnNonFiniteLoss, "on_train_epoch_end", killed_at_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        tiny_run(*overrides)
    monkeypatch.setattr(FailOnNonFiniteLoss, "on_train_epoch_end", real_end)

    fit_from: list[str | None] = []
    real_fit = pl.Trainer.fit

    def spy_fit(self, *args, ckpt_path=None, **kwargs):
        fit_from.append(ckpt_path)
        return real_fit(self, *args, ckpt_path=ckpt_path, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", spy_fit)
    resumed, run = tiny_run(*overrides)
    assert fit_from and fit_from[0] is not None and fit_from[0].endswith(LAST)
    assert resumed["epochs_trained"] == 4
    assert resumed["selection"]["best_epoch"] == reference["selection"]["best_epoch"]
    assert resumed["selection"]["best_score"] == pytest.approx(reference["selection"]["best_score"])
    saved = torch.load(run / "checkpoints" / BEST_WEIGHTS, map_location="cpu", weights_only=True)
    assert saved["best_epoch"] == reference["selection"]["best_epoch"]


def test_resumed_self_paced_run_keeps_its_schedule(tiny_run, monkeypatch):
    """The strategy's pacing state (self-paced λ0, estimated from the first batch) is a buffer in
    last.ckpt: a run killed mid-way resumes with the λ0 of its first epoch, not a re-estimate from
    the first batch after the resume, and reports the same schedule as an uninterrupted run."""
    overrides = ["strategy=self_paced", "trainer.max_epochs=4", "checkpoint.last_every_n_epochs=1"]
    reference, ref_run = tiny_run(*overrides, "tag=@reference")

    real_end = FailOnNonFiniteLoss.on_train_epoch_end

    def killed_at_epoch_2(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("killed")
        real_end(self, trainer, pl_module)

    monkeypatch.setattr(FailOnNonFiniteLoss, "on_train_epoch_end", killed_at_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        tiny_run(*overrides)
    monkeypatch.setattr(FailOnNonFiniteLoss, "on_train_epoch_end", real_end)
    resumed, run = tiny_run(*overrides)

    def schedule(folder):
        meta = json.loads((folder / "metadata.json").read_text())["strategy"]
        return meta["lambda0"], meta["lambda_per_epoch"]

    lambda0, per_epoch = schedule(run)
    assert lambda0 == schedule(ref_run)[0] and per_epoch == schedule(ref_run)[1]
    assert set(per_epoch) == {"0", "1", "2", "3"}
    assert resumed["epochs_trained"] == reference["epochs_trained"] == 4


def test_train_metric_monitor_without_validation(tiny_run):
    metrics, run = tiny_run("trainer.max_epochs=2", "trainer.limit_val_batches=0",
                            "monitor.metric=train/loss", "monitor.mode=min")
    assert metrics["selection"]["checkpoint"] == "best" and metrics["selection"]["best_epoch"] in (0, 1)
    assert (run / "checkpoints" / BEST_WEIGHTS).exists()

    # a validation monitor that never ran: the last weights are tested, and the record says so
    metrics, _ = tiny_run("trainer.limit_val_batches=0", "tag=@noval")
    assert metrics["selection"] == {"monitor": "val/auroc", "mode": "max", "best_score": None,
                                          "best_epoch": None, "checkpoint": "last"}


def test_cpu_bf16_preset_trains_with_autocast_and_channels_last(tiny_run, captured, monkeypatch):
    dtypes: set[torch.dtype] = set()
    real_conv = torch.nn.Conv2d._conv_forward

    def spy_conv(self, x, weight, bias):
        out = real_conv(self, x, weight, bias)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", spy_conv)
    metrics, run = tiny_run("trainer=cpu_bf16")
    config = (run / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "accelerator: cpu" in config
    assert torch.bfloat16 in dtypes  # Lightning's bf16-mixed autocasts the convolutions on CPU
    convs = [m for m in captured["module"].net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert captured["data"].channels_last is True
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    preds = pd.read_csv(run / "predictions.csv")
    assert ((preds["prob_0"] + preds["prob_1"]) - 1).abs().max() < 1e-2


@pytest.mark.slow
def test_compiled_network_trains_one_epoch(tiny_run):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("speed.compile on CPU needs a C++ compiler (inductor): install g++")
    metrics, run = tiny_run("speed.compile=true")
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    # in-place compilation: the saved state dict has the plain keys (no `_orig_mod.`)
    saved = torch.load(run / "checkpoints" / BEST_WEIGHTS, map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in saved["state_dict"])
    assert json.loads((run / "metadata.json").read_text())["params"] > 0


class _Planted:
    """Unpickling this runs code: what a hostile checkpoint would carry."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_a_planted_last_ckpt_is_set_aside_without_running_its_code(tmp_path, monkeypatch):
    """A last.ckpt that unpickles code is never unpickled: it is renamed `*.unreadable-*` and the
    run trains from epoch 0 (rather than failing on every rerun)."""
    from dkbench.runner.compose import compose_config
    from tests.conftest import TINY_PROBE

    monkeypatch.chdir(tmp_path)
    cfg = compose_config([*TINY_PROBE, f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"])
    ckpt_dir = Path(cfg.paths.run_dir) / "checkpoints"  # an unfinished folder: the runner would resume
    ckpt_dir.mkdir(parents=True)
    torch.save({"epoch": 0, "evil": _Planted()}, ckpt_dir / LAST)
    metrics = train_mod.train(cfg)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    assert metrics["epochs_trained"] == 1 and len(list(ckpt_dir.glob(f"{LAST}.unreadable-*"))) == 1
