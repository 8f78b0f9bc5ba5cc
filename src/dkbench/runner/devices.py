"""The torch device a run's Trainer will use, resolved from `cfg.trainer` before the Trainer exists.

Pre-stages (ROI predictor, shape autoencoder, curriculum teacher scoring) run in
`Strategy.build_net`, before Lightning picks a device, so they need the same answer up front:

- ``accelerator: auto`` → ``cuda`` if CUDA is available, else ``cpu`` (simplified: Lightning's
  ``auto`` would also pick Apple MPS or TPUs; dkbench runs on CUDA or the CPU);
- ``gpu`` / ``cuda`` → ``cuda:<i>``, ``i`` the first index of ``trainer.devices`` when that is a
  list of indices (``[2, 3]`` or the string ``"2,3"``), else 0 (a device *count*, or ``auto``,
  means Lightning starts from the first GPU);
- ``cpu`` → ``cpu``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _first_index(devices: Any) -> int:
    """The first GPU index `trainer.devices` names; 0 where it is a count or ``auto``."""
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        # Lightning reads "1,3" (and "0,") as indices, a bare "2" / "-1" / "auto" as a count
        return int(parts[0]) if "," in devices and parts else 0
    if isinstance(devices, Sequence) and len(devices) > 0:  # a list (or ListConfig) of indices
        return int(devices[0])
    return 0


def trainer_device(trainer: Mapping[str, Any] | None) -> torch.device:
    """The device of `cfg.trainer` (see the module docstring); a missing trainer means ``auto``."""
    trainer = trainer or {}
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        return torch.device("cuda", _first_index(trainer.get("devices", 1)))
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"trainer.accelerator={accelerator!r}: dkbench runs on 'cpu', 'gpu'/'cuda' or 'auto'")
