"""`checkpoint:` settings, typed and checked; light to import (the pre-flight reads them before
PyTorch Lightning is loaded). The callbacks that use them live in `runner/checkpointing.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dkbench.errors import UserError


class CheckpointConfigError(UserError, ValueError):
    """A `checkpoint.*` or `monitor.*` value the runner cannot use."""


@dataclass(frozen=True)
class CheckpointSettings:
    """`checkpoint:` in configs/train.yaml. None (null) switches that trigger off; both off → no
    `last.ckpt` at all (an interrupted run then starts again from epoch 0)."""

    last_every_n_epochs: int | None = 10
    last_every_minutes: float | None = 5.0

    @classmethod
    def from_config(cls, node: Any) -> CheckpointSettings:
        values = dict(node or {})
        unknown = sorted(set(values) - {"last_every_n_epochs", "last_every_minutes"})
        if unknown:
            raise CheckpointConfigError(
                f"unknown checkpoint setting(s) {unknown}: use last_every_n_epochs and last_every_minutes")
        n, minutes = values.get("last_every_n_epochs", cls.last_every_n_epochs), values.get(
            "last_every_minutes", cls.last_every_minutes)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise CheckpointConfigError(f"checkpoint.last_every_n_epochs={n!r}: use an integer ≥ 1, or null for never")
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0):
            raise CheckpointConfigError(f"checkpoint.last_every_minutes={minutes!r}: use a number > 0, or null for never")
        return cls(n, float(minutes) if minutes is not None else None)
