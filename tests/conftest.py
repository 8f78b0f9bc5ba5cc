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


#: A probe small enough for an end-to-end run in seconds (1 epoch, 128/64/64 images).
TINY_PROBE = [
    "dataset=probe", "backbone=tinycnn", "trainer.max_epochs=1", "data.batch_size=32",
    "dataset.options.n_train=128", "dataset.options.n_val=64", "dataset.options.n_test=64",
    "ui.progress_bar=false",
]


@pytest.fixture
def tiny_run(tmp_path):
    """`tiny_run(*overrides)` composes a run config (tiny probe by default) under tmp_path and
    trains it; returns (metrics, run_dir). Later overrides win over TINY_PROBE's."""
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import train

    def run(*overrides: str, data_dir: Path | None = None):
        extra = [f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]
        if data_dir is not None:
            extra.append(f"paths.data_dir={data_dir}")
        cfg = compose_config([*TINY_PROBE, *extra, *overrides])
        return train(cfg), Path(cfg.paths.run_dir)

    return run
