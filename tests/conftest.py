"""Shared fixtures: the data root, composed configs, tiny fast runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared public datasets (env DKBENCH_DATA, default ../shared/datasets)."""
    return Path(os.environ.get("DKBENCH_DATA", DEFAULT_DATA))


def require_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(
            f"{relative} not found under DKBENCH_DATA={data_dir}; point DKBENCH_DATA at the folder "
            f"holding the shared datasets (see README, 'Data')"
        )
    return path
