"""Where the Hydra config tree lives, and the OmegaConf resolvers it uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """`configs/` of the checkout (editable install), or DKBENCH_CONFIG_DIR."""
    env = os.environ.get("DKBENCH_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    for path in candidates:
        if (path / "train.yaml").exists():
            return path
    raise FileNotFoundError(
        f"dkbench's configs/ folder was not found (looked in {[str(c) for c in candidates]}). "
        "Install dkbench editable from its checkout (`make install`) or set DKBENCH_CONFIG_DIR."
    )


def group_entry(group: str, name: str) -> dict:
    """One group config as a plain dict with its same-group parents merged under it.

    A variant such as ``dataset/probe_clean.yaml`` lists ``defaults: [probe, _self_]`` and holds
    only what differs; Hydra merges the parent when composing, and readers of the raw file
    (`dkbench list`, config tests) must do the same or see a config without its fields. Only
    plain same-group entries are parents; ``override /...`` entries concern other groups."""
    import yaml

    raw = yaml.safe_load((config_dir() / group / f"{name}.yaml").read_text()) or {}
    defaults = raw.pop("defaults", None) or []
    parents = [d for d in defaults if isinstance(d, str) and d != "_self_"]
    merged = OmegaConf.merge(*(group_entry(group, parent) for parent in parents), raw) if parents else raw
    return OmegaConf.to_container(OmegaConf.create(merged)) if parents else raw


def _int_mul(value: int, factor: float) -> int:
    return int(round(float(value) * float(factor)))


def _placement_slots(devices, runs_per_device) -> int:
    from dkbench.runner.placement import slot_count  # imports torch: only when a launcher asks

    return slot_count(devices, runs_per_device)


def register_resolvers() -> None:
    resolvers = {
        "dk_cwd": lambda: os.getcwd(),
        "dk_isatty": lambda: sys.stdout.isatty(),
        "dk_int_mul": _int_mul,
        "dk_placement_slots": _placement_slots,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
