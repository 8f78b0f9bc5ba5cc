"""Callbacks the runner adds to every Trainer."""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued kernels; a no-op on CPU (its ops run synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)  # mps, xpu: same API
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()


class TrainThroughput(pl.Callback):
    """Training images per second, per epoch: from the epoch's first batch fetch to the end of
    its last training step (validation excluded). The first epoch is a warm-up (allocator,
    cuDNN autotune) and is left out of the summary when later epochs exist.

    On an accelerator the host only queues kernels, so the clock would measure queuing: the
    device is synchronised at the epoch's start and after its last training batch — twice an
    epoch, never per step, so the timing itself does not slow training down."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []  # (images, seconds)
        #: wall-clock time when the first training step started (runner overhead ends here)
        self.first_step_at: float | None = None
        self._start: float | None = None
        self._last_end: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self._start, self._last_end, self._images = time.perf_counter(), None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += int(batch["image"].shape[0])
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's last step: wait for it
            synchronize(pl_module.device)
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is not None and self._last_end is not None:
            self.epochs.append((self._images, self._last_end - self._start))
        self._start = None

    @property
    def images_per_second(self) -> float:
        steady = self.epochs[1:] or self.epochs
        seconds = sum(s for _, s in steady)
        return sum(n for n, _ in steady) / seconds if seconds > 0 else float("nan")


class ProgressLog(pl.Callback):
    """Progress as log lines when there is no progress bar (a sweep worker, a batch job): at most
    one line every `every_s` seconds, at an epoch's end or inside a long epoch, plus the last
    epoch: epoch, loss, the monitored validation metric (and its best so far), elapsed, ETA."""

    def __init__(self, logger: Any, monitor: str, mode: str, every_s: float = 30.0) -> None:
        self.logger, self.monitor, self.mode, self.every_s = logger, monitor, mode, float(every_s)
        self._began = self._last = time.time()
        self._first_epoch = 0  # a resumed run's ETA counts from where it resumed
        self._best: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._began = self._last = time.time()
        self._first_epoch = trainer.current_epoch

    def _due(self) -> bool:
        return time.time() - self._last >= self.every_s

    def _eta(self, trainer, epoch_fraction: float) -> str:
        """Elapsed and remaining minutes, from the pace since this process started training."""
        elapsed = time.time() - self._began
        total = max(trainer.max_epochs - self._first_epoch, 1)
        progress = (trainer.current_epoch - self._first_epoch + epoch_fraction) / total
        eta = elapsed / progress * (1 - progress) if progress > 0 else float("nan")
        return f"{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due() and batch_idx + 1 < trainer.num_training_batches:
            self._last = time.time()
            fraction = (batch_idx + 1) / max(trainer.num_training_batches, 1)
            self.logger.info("epoch %d/%d · batch %d/%d · %s", trainer.current_epoch + 1, trainer.max_epochs,
                          batch_idx + 1, trainer.num_training_batches, self._eta(trainer, fraction))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # (runs after the epoch's validation; a callback's on_validation_epoch_end would run before
        # the module's and see the previous epoch's numbers)
        metrics = trainer.callback_metrics
        value = metrics.get(self.monitor)
        if value is not None and math.isfinite(float(value)):
            better = (max if self.mode == "max" else min)
            self._best = float(value) if self._best is None else better(self._best, float(value))
        last_epoch = trainer.current_epoch + 1 >= trainer.max_epochs
        if not (self._due() or last_epoch):
            return
        self._last = time.time()
        loss = metrics.get("train/loss")
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if value is not None:
            parts.append(f"{self.monitor} {float(value):.4f} (best {self._best:.4f})")
        parts.append(self._eta(trainer, 1.0))
        self.logger.info(" · ".join(parts))


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN/inf: the run is recorded as failed."""


class FailOnNonFiniteLoss(pl.Callback):
    """Checks the epoch's mean loss (one sync per epoch, not per step)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"non-finite training loss {float(loss)} at epoch {trainer.current_epoch}")


class EarlierAttempts(pl.Callback):
    """The wall time of a run's earlier attempts travels in last.ckpt, so a resumed run's
    `wall_time_s` counts the training its checkpoint holds, not only the last process's share (a
    suite killed and resumed twice would otherwise report a fraction of its compute). A killed
    attempt's time after its last checkpoint is not counted: that work is redone, and counted then.
    `earlier_s` is the checkpointed time of the attempts before this process (0 for a fresh run)."""

    def __init__(self, started: float) -> None:
        self.started = float(started)
        self.earlier_s = 0.0
        self.resumed = False

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": float(self.earlier_s + time.time() - self.started)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_s = float(state_dict.get("elapsed_s", 0.0))
        self.resumed = True


class ResumableRandomState(pl.Callback):
    """The process-wide random streams (torch CPU and CUDA, numpy, Python's `random`) travel in
    last.ckpt, so a resumed run draws the dropout masks and random choices an uninterrupted run
    would. Lightning restores model, optimiser and loops but not these (it reseeds nothing on
    resume; `seed_everything` at start gives epoch 0's stream to whatever epoch comes first).

    The states are taken when the checkpoint is written (an epoch's end) and put back at the
    start of the next training epoch, not at restore time: between the restore and that epoch
    Lightning runs its sanity validation, which an uninterrupted run does not run there. Every
    value is a tensor or a plain number, so last.ckpt stays loadable with `weights_only=True`."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        import random

        import numpy as np

        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
