"""Checkpoints that cost (almost) nothing per epoch.

`BestWeights` keeps the best weights by the monitored metric in memory (a clone of the state
dict, on the module's device: no host copy, no disk write per improving epoch); the runner
writes them once, at the end, as weights only. `PeriodicLastCheckpoint` writes the resumable
`last.ckpt` (full trainer state) every N epochs or every M minutes, whichever comes first, to a
temporary file that is renamed over the old one: a crash or a full disk mid-write leaves the
previous `last.ckpt` intact, never a truncated one. The best-so-far weights, score and epoch are
the callback's state, so they travel inside `last.ckpt` and survive a resume.

Both subclass Lightning's `Checkpoint`: Lightning then adds no default `ModelCheckpoint`, and runs
them after the module's own `on_train_epoch_end` (where epoch metrics are final), best before last.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from dkbench.runner.checkpoint_settings import CheckpointConfigError, CheckpointSettings
from dkbench.storage import atomic_file, fsync_dir

log = logging.getLogger("dkbench")

LAST = "last.ckpt"
BEST_WEIGHTS = "best_weights.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` through `atomic_file`: the old file or the complete new one, never half."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


class BestWeights(Checkpoint):
    """The best weights by `monitor` (`mode` min/max), kept in memory.

    A `val/...` monitor is read when validation ends (every validation, whatever its frequency,
    so the weights are exactly those that were scored); any other monitor (e.g. `train/loss`
    with validation off) at the end of each training epoch. A NaN score never counts as an
    improvement; ties keep the earlier epoch. If the monitor is never logged, `weights` stays
    None and the run tests its last weights (`selection.checkpoint: last`).
    """

    def __init__(self, monitor: str, mode: str):
        if mode not in ("min", "max"):
            raise CheckpointConfigError(f"monitor.mode={mode!r}: use min or max")
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def _improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def _consider(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)  # one device sync per validation, not per step
        if self._improves(score):
            self.best_score, self.best_epoch = score, trainer.current_epoch
            # a device-side copy: no host transfer, no disk write
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor.startswith("val/") and not trainer.sanity_checking:
            self._consider(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.monitor.startswith("val/"):
            self._consider(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.weights is None:
            log.warning("monitor %s was never logged (or always NaN): testing the last weights", self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        self.weights = state_dict["weights"]

    def load_into(self, pl_module: pl.LightningModule) -> bool:
        """Puts the best weights into `pl_module`; False if there are none (test the last)."""
        if self.weights is None:
            return False
        pl_module.load_state_dict(self.weights)
        return True

    def save(self, path: Path, tested: pl.LightningModule) -> None:
        """The weights the run was tested with, as weights only (loadable with
        `torch.load(..., weights_only=True)`), written once: the best ones, or `tested`'s own
        (the last) when the monitor never improved, so a later stage (a transfer source, a
        curriculum teacher) always finds the run's selected model in one file."""
        weights = self.weights if self.weights is not None else tested.state_dict()
        atomic_torch_save({
            "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
            "checkpoint": "best" if self.weights is not None else "last",
            "monitor": self.monitor, "mode": self.mode,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
        }, path)


class PeriodicLastCheckpoint(Checkpoint):
    """The resumable `last.ckpt`, every `every_n_epochs` epochs or `every_minutes` minutes
    (checked at epoch ends), whichever first. A failed write is logged and the run goes on with
    the previous `last.ckpt`: losing resumability for a while is better than losing the run."""

    def __init__(self, dirpath: Path, settings: CheckpointSettings):
        self.dirpath = Path(dirpath)
        self.settings = settings
        self.saves = 0
        self._last_save = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()

    def _due(self, epoch: int) -> bool:
        n, minutes = self.settings.last_every_n_epochs, self.settings.last_every_minutes
        if n is not None and (epoch + 1) % n == 0:
            return True
        return minutes is not None and time.monotonic() - self._last_save >= minutes * 60

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer.current_epoch):
            return
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".{LAST}.{os.getpid()}.tmp"
        try:
            # the full trainer state (optimizer, loops, callbacks; Lightning's default for a save);
            # every rank calls it, rank 0 writes. It holds only tensors and plain containers, so the
            # runner reads it back with `weights_only=True` on resume
            # (tests/integration/test_checkpointing.py checks it)
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
                fsync_dir(self.dirpath)
        except (OSError, RuntimeError) as err:  # full disk: torch.save raises RuntimeError
            log.warning("could not write %s (%s: %s); the previous one is kept", self.path, type(err).__name__, err)
            tmp.unlink(missing_ok=True)
            return
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.saves += 1
        self._last_save = time.monotonic()


def resumable_checkpoint(folder: Path) -> Path | None:
    """`folder/last.ckpt` if it can be read back safely, else None.

    It is read the way the resume will read it (`weights_only=True`: a planted pickle runs no
    code) but memory-mapped, so the check costs the archive's index, not its tensors. A file that
    fails — truncated by a crash outside dkbench's atomic writes, damaged on disk, planted — is
    renamed to `last.ckpt.unreadable-<time>` (kept for inspection, never deleted) and the run
    starts from epoch 0 rather than failing on every rerun with a zip-reader error."""
    path = Path(folder) / LAST
    if not path.exists():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any failure means: not resumable
        aside = path.with_name(f"{LAST}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        log.warning("%s cannot be read back (%s: %s); moved to %s, the run starts from epoch 0",
                    path, type(err).__name__, str(err).splitlines()[0] if str(err) else "", aside.name)
        return None
    return path
