"""Interrupted runs lose nothing: a run killed between epochs and rerun resumes from last.ckpt
and ends exactly as an uninterrupted run (on CPU): same CSV log rows, same selected epoch, same
test metrics — the random streams (dropout, shuffling, augmentation) are part of the checkpoint."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dkbench.runner.callbacks import FailOnNonFiniteLoss

#: dropout and augmentation on, so a resume that redrew its random numbers would show
RANDOM = ["trainer.max_epochs=4", "checkpoint.last_every_n_epochs=1", "data.augment.hflip=true",
          "data.augment.translate=0.1"]


class Killed(RuntimeError):
    pass


def _kill_at(monkeypatch, epoch: int) -> None:
    """The run dies at the end of `epoch` (after that epoch's last.ckpt is written)."""
    real_end = FailOnNonFiniteLoss.on_train_epoch_end

    def dying(self, trainer, pl_module):
        real_end(self, trainer, pl_module)
        if trainer.current_epoch == epoch:
            raise Killed(f"killed after epoch {epoch}")

    monkeypatch.setattr(FailOnNonFiniteLoss, "on_train_epoch_end", dying)


def _log(run) -> pd.DataFrame:
    return pd.read_csv(run / "csv" / "metrics.csv")


@pytest.mark.parametrize("strategy", ["baseline", "curriculum"])
def test_resumed_run_equals_an_uninterrupted_one(tiny_run, monkeypatch, strategy):
    overrides = [*RANDOM, f"strategy={strategy}"]
    reference, ref_run = tiny_run(*overrides, "tag=@reference")

    _kill_at(monkeypatch, 1)
    with pytest.raises(Killed):
        tiny_run(*overrides)
    monkeypatch.undo()
    resumed, run = tiny_run(*overrides)

    tested = {k: v for k, v in reference.items() if k.startswith(("test/", "val/"))}
    assert tested and {k: resumed[k] for k in tested} == tested  # exactly, not approximately
    assert resumed["selection"] == reference["selection"]
    ref_log, log = _log(ref_run), _log(run)
    assert set(log.dropna(subset=["val/auroc"])["epoch"]) == {0, 1, 2, 3}  # the epochs before the kill kept
    pd.testing.assert_frame_equal(log.drop(columns=[c for c in log if "per_s" in c or "time" in c]),
                                  ref_log.drop(columns=[c for c in ref_log if "per_s" in c or "time" in c]))
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    # the wall time counts the first attempt's checkpointed epochs too, not only the resumed share
    assert reference["resumed_after_s"] is None and resumed["resumed_after_s"] > 0
    assert resumed["wall_time_s"] > resumed["resumed_after_s"]
