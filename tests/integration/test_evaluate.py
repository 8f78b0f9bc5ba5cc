"""External validation (`dkbench evaluate`): a finished run's selected model on another dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dkbench.errors import RunConfigError
from dkbench.runner.evaluate import evaluate

SMALL = ["dataset.options.n_train=96", "dataset.options.n_val=48", "dataset.options.n_test=48"]


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DKBENCH_ROOT": str(root), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "dkbench.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    for keep in ("true", "false"):
        done = cli(root, "train", "seed=3", "trainer.max_epochs=2", "data.batch_size=32", "ui.progress_bar=false",
                   f"keep_checkpoints={keep}", f"tag=@keep_{keep}", *SMALL)
        assert done.returncode == 0, done.stderr[-2000:]
    return root


def run_dir(root: Path, keep: str = "true") -> Path:
    # the command-line settings name the suite folder (adhoc@...: run_folder.variant_suffix)
    (folder,) = (root / "runs").glob(f"adhoc@*/probe/tinycnn__baseline@keep_{keep}/seed_3")
    return folder


def test_the_training_dataset_reproduces_the_runs_own_test_scores(trained, monkeypatch):
    monkeypatch.setenv("DKBENCH_ROOT", str(trained))
    run = run_dir(trained)
    record = evaluate(run, ["dataset=probe", *SMALL])
    own = json.loads((run / "metrics.json").read_text())
    for key in ("test/auroc", "test/acc", "test/loss"):
        assert record[key] == pytest.approx(own[key], abs=1e-6), key
    saved = json.loads((run / "external" / "probe" / "metrics.json").read_text())
    assert saved["trained_on"] == "probe" and saved["evaluated_on"] == "probe" and saved["split"] == "test"
    assert (run / "external" / "probe" / "predictions.csv").exists()


def test_another_dataset_and_another_split_get_their_own_folders(trained, monkeypatch):
    monkeypatch.setenv("DKBENCH_ROOT", str(trained))
    run = run_dir(trained)
    before = (run / "metrics.json").read_bytes()
    shifted = evaluate(run, ["dataset=probe_clean", *SMALL])
    assert shifted["evaluated_on"] == "probe_clean" and 0.0 <= shifted["test/auroc"] <= 1.0
    assert shifted["same_source"] is True  # the same generator without its marker: flagged, not external data
    val = evaluate(run, ["dataset=probe", *SMALL], split="val")
    own = json.loads((run / "metrics.json").read_text())
    assert val["test/auroc"] == pytest.approx(own["val/auroc"], abs=1e-6)  # the val split, scored as the run scored it
    assert (run / "external" / "probe@val" / "metrics.json").exists()
    assert (run / "metrics.json").read_bytes() == before  # the run's own results untouched


def test_a_head_that_does_not_fit_is_refused_in_one_line(trained):
    done = cli(trained, "evaluate", f"run={run_dir(trained)}", "dataset=probe_3class", *SMALL)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "its head does not fit: task binary (trained on 'probe') vs multiclass" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_run_without_kept_weights_says_how_to_get_them(trained, monkeypatch):
    monkeypatch.setenv("DKBENCH_ROOT", str(trained))
    with pytest.raises(RunConfigError, match="keep_checkpoints=true"):
        evaluate(run_dir(trained, "false"), ["dataset=probe", *SMALL])
    with pytest.raises(RunConfigError, match="not a finished run"):
        evaluate(trained / "runs" / "nothing", ["dataset=probe"])
