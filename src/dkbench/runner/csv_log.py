"""The per-epoch CSV log (`<run>/csv/metrics.csv`), kept across a resume.

Lightning's `CSVLogger` deletes an existing `metrics.csv` when it starts, so a resumed run lost
the rows of every epoch before the interruption — and with them the selected epoch's validation
scores in `metrics.json`. `ResumableCSVLogger` keeps the file; `KeepLoggedEpochs` then drops,
once training starts, the rows of the steps about to be trained again (those logged after the
last checkpoint and before the crash), so every epoch appears exactly once. A fresh run
(training from epoch 0) thus starts from an empty log, as before.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from dkbench.storage import atomic_file


class _KeepingWriter(_ExperimentWriter):
    """Lightning's writer, minus the deletion of an existing log; appends under its header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose log survives a resume (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_steps_before(self, step: int) -> None:
        """Rewrite the log (atomically) without the rows logged at global step `step` or later
        (by step, not epoch: the learning-rate rows carry no epoch)."""
        self.experiment.save()  # anything buffered goes in first, then is judged like the rest
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if r.get("step") not in (None, "") and float(r["step"]) < step]
        if len(kept) == len(rows):
            return
        with atomic_file(Path(path), "w") as out:
            writer = csv.DictWriter(out, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)


class KeepLoggedEpochs(pl.Callback):
    """At the start of training (after a resume restored the loops), trims every
    `ResumableCSVLogger` to the steps before the one training starts at."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger) and trainer.is_global_zero:
                logger.keep_steps_before(trainer.global_step)
