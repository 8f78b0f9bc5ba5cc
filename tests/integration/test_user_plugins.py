"""Bring your own dataset and backbone without touching the package: a plugin module of the
user's (a reader and a backbone registered by decorator), YAMLs in a user config folder
(`--configs` / DKBENCH_USER_CONFIGS), then sweep + report + evaluate through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dkbench.config import USER_CONFIGS_ENV, group_files
from dkbench.errors import RunConfigError

PLUGIN = '''
"""A user's plugin: a dataset reader and a backbone, registered by the project's decorators."""
import numpy as np
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.data.registry import register_dataset
from dkbench.data.spec import DatasetArrays, SplitArrays


@register_dataset("stripes")
def stripes(data_dir, spec, *, n: int = 64, seed: int = 0):
    """Bright vertical (1) or horizontal (0) stripes on noise."""
    rng = np.random.default_rng(seed)
    splits = {}
    for k, name in enumerate(("train", "val", "test")):
        label = np.arange(n) % 2
        image = rng.integers(0, 60, size=(n, 1, spec.size, spec.size)).astype(np.uint8)
        image[label == 1, :, :, ::4] = 255
        image[label == 0, :, ::4, :] = 255
        splits[name] = SplitArrays(image=image, label=label.astype(np.int64),
                                   ids=np.array([f"{name}{i}" for i in range(n)]))
    return DatasetArrays(spec=spec, splits=splits, checksum=f"stripes-{n}-{seed}")


class TwoConv(Backbone):
    def __init__(self, in_chans):
        super().__init__()
        self.in_chans, self.spatial_dims, self.num_features = in_chans, 2, 8
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.ReLU())

    def forward_features(self, x):
        return self.body(x)


@register_backbone("twoconv")
def twoconv(*, in_chans, spatial_dims=2, img_size=None, pretrained=False, **kwargs):
    return TwoConv(in_chans)
'''

CONFIGS = {
    "dataset/stripes.yaml": """
        name: stripes
        reader: stripes
        task: binary
        num_classes: 2
        in_chans: 1
        spatial_dims: 2
        size: 16
        class_names: [horizontal, vertical]
        provides: []
        source: synthetic-stripes
        label_derived: []
        options: {n: 64, seed: 0}
    """,
    "dataset/stripes_shifted.yaml": """
        defaults:
          - stripes
          - _self_
        name: stripes_shifted
        options: {seed: 5}
    """,
    "backbone/twoconv.yaml": """
        name: twoconv
        arch: twoconv
        pretrained: false
        weights: null
        kwargs: {}
    """,
    "suite/mine.yaml": """
        name: mine
        description: the user's own data and network
        datasets: [stripes]
        backbones: [twoconv]
        strategies: [baseline]
        seeds: [0, 1]
        baseline: baseline
        rank_metric: test/auroc
        metrics: [test/auroc]
        overrides: [trainer.max_epochs=3, data.batch_size=16]
    """,
}


@pytest.fixture()
def user_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "plugin_pkg").mkdir()
    (tmp_path / "plugin_pkg" / "my_dkbench_plugin.py").write_text(PLUGIN)
    configs = tmp_path / "my_configs"
    for rel, text in CONFIGS.items():
        (configs / rel).parent.mkdir(parents=True, exist_ok=True)
        (configs / rel).write_text(textwrap.dedent(text))
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path), "DKBENCH_PLUGINS": "my_dkbench_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin_pkg"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline"}
    return configs, env


def cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dkbench.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"dkbench {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_sweep_report_and_evaluate_with_the_users_own_dataset_and_backbone(user_project):
    configs, env = user_project
    root = Path(env["DKBENCH_ROOT"])
    listed = cli(root, env, "--configs", str(configs), "list", "datasets").stdout
    assert "stripes" in listed and "breastmnist" in listed  # added to the package's, not instead
    out = cli(root, env, "sweep", "--configs", str(configs), "suite=mine", "ui.progress_bar=false").stdout
    assert "2 done, 0 failed" in out
    runs = sorted((root / "runs/mine/stripes/twoconv__baseline").glob("seed_*/metrics.json"))
    assert len(runs) == 2
    assert all(json.loads(p.read_text())["test/auroc"] > 0.9 for p in runs)  # stripes are easy: it learned
    cli(root, env, "report", "--configs", str(configs), "suite=mine")
    assert "stripes" in (root / "reports/mine/leaderboard.md").read_text()
    env = {**env, USER_CONFIGS_ENV: str(configs)}  # the environment variable works as the flag does
    cli(root, env, "evaluate", f"run={runs[0].parent}", "dataset=stripes_shifted")
    external = json.loads((runs[0].parent / "external/stripes_shifted/metrics.json").read_text())
    assert external["evaluated_on"] == "stripes_shifted" and external["test/auroc"] > 0.9


def test_a_user_config_may_not_replace_a_package_one(tmp_path, monkeypatch):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "probe.yaml").write_text("name: probe\n")
    monkeypatch.setenv(USER_CONFIGS_ENV, str(tmp_path))
    with pytest.raises(RunConfigError, match="never replace them; rename it"):
        group_files("dataset")
    monkeypatch.setenv(USER_CONFIGS_ENV, str(tmp_path / "absent"))
    with pytest.raises(RunConfigError, match="does not exist"):
        group_files("dataset")
