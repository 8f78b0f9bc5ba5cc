"""Tables of what each registry holds, for `dkbench list`."""

from __future__ import annotations

from pathlib import Path

from dkbench.config import group_entry, group_files


def _yaml_entries(group: str) -> dict[str, dict]:
    return {name: group_entry(group, name) for name in sorted(group_files(group))}


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


def _builds_in_3d(arch: str) -> bool:
    """Whether backbone `arch` builds for 3D input (on the `meta` device: shapes only, no memory)."""
    import torch

    from dkbench.backbones import create_backbone

    try:
        with torch.device("meta"):
            create_backbone(arch, in_chans=1, spatial_dims=3, img_size=64)
    except Exception:  # noqa: BLE001 - any refusal means: not for 3D input
        return False
    return True


def list_backbones() -> str:
    """Every backbone config with what it can do: dims, dense (segmentation), a feature pyramid
    (detection), offline ImageNet weights, the smallest input, and the optional extra a config
    needs when it is not installed."""
    from dkbench.backbones import BACKBONES
    from dkbench.backbones.registry import is_dense, pretrained_weights_file, task_incompatibility

    installed = set(BACKBONES.names())
    rows = []
    for stem, cfg in _yaml_entries("backbone").items():
        arch = str(cfg.get("arch", stem))
        about = _first_comment(group_files("backbone")[stem])
        if arch not in installed:
            extra = about[about.find("dkbench["):].split("]")[0] + "]" if "dkbench[" in about else "an optional extra"
            rows.append([stem, arch, "-", "-", "-", "-", cfg.get("min_size") or "-", f"not installed: needs {extra}"])
            continue
        weights = "shipped / cached" if pretrained_weights_file(arch, 2) else "-"
        pyramid = "no" if task_incompatibility(arch, "detection") else "yes"
        rows.append([stem, arch, "2D, 3D" if _builds_in_3d(arch) else "2D", "yes" if is_dense(arch) else "no",
                     pyramid, weights, cfg.get("min_size") or "-",
                     "pretrained: true" if cfg.get("pretrained") else ""])
    return _table(["config (backbone=…)", "registry name", "dims", "dense (segmentation)",
                   "pyramid (detection)", "ImageNet weights offline (2D)", "min input px", "notes"], rows)


def list_strategies() -> str:
    from dkbench.strategies import STRATEGIES

    return _table(
        ["strategy", "requires", "tasks", "follows"],
        [[name, ", ".join(sorted(cls.requires)) or "labels", _joined(sorted(cls.tasks)), cls.citation]
         for name, cls in STRATEGIES.items()],
    )


def list_experiments() -> str:
    return "\n".join(f"{name}: {_first_comment(path)}" for name, path in sorted(group_files("experiment").items()))


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
