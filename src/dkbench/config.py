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


#: folders of the user's own configs (os.pathsep-separated), added to the package's: a dataset,
#: backbone, strategy or suite YAML there is used like a package one (`dkbench --configs DIR`)
USER_CONFIGS_ENV = "DKBENCH_USER_CONFIGS"


def user_config_dirs() -> list[Path]:
    from dkbench.errors import RunConfigError

    dirs = [Path(p).expanduser().resolve() for p in os.environ.get(USER_CONFIGS_ENV, "").split(os.pathsep) if p]
    for path in dirs:
        if not path.is_dir():
            raise RunConfigError(f"user config folder {path} (from {USER_CONFIGS_ENV} / --configs) does not exist; "
                                 "create it with sub-folders dataset/, backbone/, strategy/, suite/ as needed")
    return dirs


def config_dirs() -> list[Path]:
    """The package's configs, then the user's folders."""
    return [config_dir(), *user_config_dirs()]


def group_files(group: str) -> dict[str, Path]:
    """name → YAML file of a config group across the package's and the user's folders. User
    configs add names; one that reuses a package name is refused (it would silently replace it)."""
    from dkbench.errors import RunConfigError

    files: dict[str, Path] = {}
    for folder in config_dirs():
        for path in sorted((folder / group).glob("*.yaml")):
            if path.stem in files:
                raise RunConfigError(f"config {path} has the name of {files[path.stem]}: user configs add to "
                                     f"dkbench's, never replace them; rename it (e.g. my_{path.stem}.yaml)")
            files[path.stem] = path
    return files


def searchpath_overrides() -> list[str]:
    """The Hydra override that adds the user's config folders (none without them)."""
    dirs = user_config_dirs()
    return [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"] if dirs else []


def group_entry(group: str, name: str) -> dict:
    """One group config as a plain dict with its same-group parents merged under it.

    A variant such as ``dataset/probe_clean.yaml`` lists ``defaults: [probe, _self_]`` and holds
    only what differs; Hydra merges the parent when composing, and readers of the raw file
    (`dkbench list`, config tests) must do the same or see a config without its fields. Only
    plain same-group entries are parents; ``override /...`` entries concern other groups."""
    import yaml

    raw = yaml.safe_load(group_files(group)[name].read_text()) or {}
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
