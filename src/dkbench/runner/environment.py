"""Facts about where a run happened, for metadata.json (reproducibility)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("dkbench", "torch", "pytorch-lightning", "torchmetrics", "monai", "hydra-core", "numpy", "pandas")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_sha(repo: Path | None = None) -> str:
    repo = repo or Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        # dirty: a tracked file changed anywhere, or a new file where code and configs live (a
        # strategy or dataset YAML not yet committed changes results as much as an edit does)
        dirty = any(subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", *flags],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip() for flags in (["--untracked-files=no"], ["--untracked-files=all", "--", "src", "configs"]))
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
