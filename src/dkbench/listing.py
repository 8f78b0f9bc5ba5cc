"""Tables of what each registry holds, for `dkbench list`."""

from __future__ import annotations

from pathlib import Path

import yaml

from dkbench.config import config_dir


def _yaml_entries(group: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted((config_dir() / group).glob("*.yaml"))}


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def list_datasets() -> str:
    rows = ["config | task | classes | chans | dims | size | provides", "--- | --- | --- | --- | --- | --- | ---"]
    for name, cfg in _yaml_entries("dataset").items():
        rows.append(
            f"{name} | {cfg.get('task')} | {cfg.get('num_classes')} | {cfg.get('in_chans')} | "
            f"{cfg.get('spatial_dims')}D | {cfg.get('size')} | {', '.join(cfg.get('provides') or []) or '-'}"
        )
    return "\n".join(rows)


def list_backbones() -> str:
    from dkbench.backbones import BACKBONES

    configs: dict[str, list[str]] = {}
    for stem, cfg in _yaml_entries("backbone").items():
        configs.setdefault(cfg.get("arch", stem), []).append(stem)
    rows = ["registry name | configs (backbone=…)", "--- | ---"]
    rows += [f"{name} | {', '.join(configs.get(name, [])) or '(no yaml)'}" for name in BACKBONES.names()]
    return "\n".join(rows)


def list_strategies() -> str:
    from dkbench.strategies import STRATEGIES

    rows = ["strategy | requires | tasks | follows", "--- | --- | --- | ---"]
    for name, cls in STRATEGIES.items():
        rows.append(
            f"{name} | {', '.join(sorted(cls.requires)) or 'labels'} | {', '.join(sorted(cls.tasks))} | {cls.citation}"
        )
    return "\n".join(rows)


def list_experiments() -> str:
    paths = sorted((config_dir() / "experiment").glob("*.yaml"))
    return "\n".join(f"{p.stem}: {_first_comment(p)}" for p in paths)


def list_suites() -> str:
    rows = ["suite | datasets | backbones | strategies | seeds", "--- | --- | --- | --- | ---"]
    for name, cfg in _yaml_entries("suite").items():
        rows.append(
            f"{name} | {', '.join(cfg.get('datasets', []))} | {', '.join(cfg.get('backbones', []))} | "
            f"{', '.join(cfg.get('strategies', []))} | {cfg.get('seeds')}"
        )
    return "\n".join(rows)


LISTERS = {
    "datasets": list_datasets,
    "backbones": list_backbones,
    "strategies": list_strategies,
    "experiments": list_experiments,
    "suites": list_suites,
}
