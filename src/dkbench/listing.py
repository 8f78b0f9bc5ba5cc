"""Tables of what each registry holds, for `dkbench list`."""

from __future__ import annotations

from pathlib import Path

from dkbench.config import config_dir, group_entry


def _yaml_entries(group: str) -> dict[str, dict]:
    return {p.stem: group_entry(group, p.stem) for p in sorted((config_dir() / group).glob("*.yaml"))}


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def _table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (what `dkbench list` prints)."""
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(cell) for cell in row) for row in rows]
    return "\n".join(lines)


def _joined(values) -> str:
    return ", ".join(str(v) for v in values or []) or "-"


def list_datasets() -> str:
    entries = _yaml_entries("dataset")
    knowledge = [f"- {name} · {key}: {' '.join(str(text).split())}"
                 for name, cfg in entries.items() for key, text in (cfg.get("knowledge") or {}).items()]
    overview = _table(
        ["config", "task", "classes", "chans", "dims", "size", "provides", "label-derived (never an input)"],
        [[name, cfg.get("task"), cfg.get("num_classes"), cfg.get("in_chans"), f"{cfg.get('spatial_dims')}D",
          cfg.get("size"), _joined(cfg.get("provides")), _joined(cfg.get("label_derived"))]
         for name, cfg in entries.items()],
    )
    if not knowledge:
        return overview
    return overview + "\n\nExpert knowledge each dataset provides (its YAML's `knowledge:`):\n" + "\n".join(knowledge)


def list_backbones() -> str:
    from dkbench.backbones import BACKBONES

    configs: dict[str, list[str]] = {}
    for stem, cfg in _yaml_entries("backbone").items():
        configs.setdefault(cfg.get("arch", stem), []).append(stem)
    return _table(
        ["registry name", "configs (backbone=…)"],
        [[name, ", ".join(configs.get(name, [])) or "(no yaml)"] for name in BACKBONES.names()],
    )


def list_strategies() -> str:
    from dkbench.strategies import STRATEGIES

    return _table(
        ["strategy", "requires", "tasks", "follows"],
        [[name, ", ".join(sorted(cls.requires)) or "labels", _joined(sorted(cls.tasks)), cls.citation]
         for name, cls in STRATEGIES.items()],
    )


def list_experiments() -> str:
    paths = sorted((config_dir() / "experiment").glob("*.yaml"))
    return "\n".join(f"{p.stem}: {_first_comment(p)}" for p in paths)


def list_suites() -> str:
    return _table(
        ["suite", "datasets", "backbones", "strategies", "seeds"],
        [[name, _joined(cfg.get("datasets")), _joined(cfg.get("backbones")), _joined(cfg.get("strategies")),
          cfg.get("seeds")] for name, cfg in _yaml_entries("suite").items()],
    )


LISTERS = {
    "datasets": list_datasets,
    "backbones": list_backbones,
    "strategies": list_strategies,
    "experiments": list_experiments,
    "suites": list_suites,
}
