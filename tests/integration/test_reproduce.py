"""`dkbench reproduce`: a finished run retrained from its own config with today's code, compared."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from dkbench.cli import main
from dkbench.runner.compose import compose_config
from dkbench.runner.reproduce import compare_metrics, reproduce, summary_line
from dkbench.runner.train import train

TINY = ["dataset=probe", "backbone=tinycnn", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "data.batch_size=32", "dataset.options.n_train=96", "dataset.options.n_val=64", "dataset.options.n_test=64"]
CELL = "adhoc/probe/tinycnn__baseline/seed_0"


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A finished run whose runs folder was moved after training (its config.yaml still names the old one)."""
    root = tmp_path_factory.mktemp("trained")
    train(compose_config([*TINY, f"paths.root_dir={root / 'first'}", f"paths.runs_dir={root / 'first/runs'}"]))
    shutil.move(root / "first", root / "moved")
    return root, root / "moved/runs" / CELL


def _stamps(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_cpu_run_reproduces_to_the_last_digit_and_the_original_is_untouched(moved_run, tmp_path):
    root, run = moved_run
    before = _stamps(run)
    record = reproduce(run, into=tmp_path / "again")
    assert record["agrees"] and record["differ"] == {} and record["missing"] == []
    assert record["compared"] == record["identical"] >= 6  # test and val numbers of the selected epoch
    assert record["config_hash"]["recorded"] == record["config_hash"]["now"]
    assert record["data_checksum_sha256"]["recorded"] == record["data_checksum_sha256"]["now"]
    new = tmp_path / "again/runs" / CELL
    assert json.loads((new / "reproduction.json").read_text())["agrees"] is True
    assert (new / "csv/metrics.csv").is_file()  # the logger's resolved folder moved with the run
    assert _stamps(run) == before and not (root / "first").exists()  # nothing written to the old paths
    assert summary_line(record).startswith("REPRODUCED: ")


def test_a_changed_number_is_reported_and_tolerance_bounds_it(moved_run, tmp_path):
    _, run = moved_run
    copy = tmp_path / "runs" / CELL
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    recorded = metrics["test/auroc"]
    (copy / "metrics.json").write_text(json.dumps({**metrics, "test/auroc": recorded + 0.1}))
    record = reproduce(copy, into=tmp_path / "again")
    assert not record["agrees"] and list(record["differ"]) == ["test/auroc"]
    assert record["max_abs_diff"] == pytest.approx(0.1)
    assert "DIFFERS" in summary_line(record) and "test/auroc" in summary_line(record)
    # the reproduction is finished now: asked again (with a tolerance) it is read back, not retrained
    stamp = (tmp_path / "again/runs" / CELL / "metrics.json").stat().st_mtime_ns
    assert reproduce(copy, into=tmp_path / "again", tolerance=0.2)["agrees"]
    assert (tmp_path / "again/runs" / CELL / "metrics.json").stat().st_mtime_ns == stamp


def test_a_post_hoc_run_retrains_its_baseline_in_its_own_scratch_folder(tmp_path):
    # the saved config is resolved: unless the run's paths become interpolations again, the baseline
    # pre-stage composed from it would name the post-hoc run's own folder (and wait on its own lock)
    settings = ["dataset=probe_seg", "backbone=unet", "dataset.options.n_train=32", "dataset.options.n_val=16",
                "dataset.options.n_test=16", "trainer.max_epochs=2", "data.batch_size=16",
                "strategy=anatomical_postprocess", f"paths.root_dir={tmp_path / 'a'}",
                f"paths.runs_dir={tmp_path / 'a/runs'}"]
    train(compose_config(settings))
    run = tmp_path / "a/runs/adhoc/probe_seg/unet__anatomical_postprocess/seed_0"
    # in a child process with a time limit: the bug this guards against was a wait that never ends
    proc = subprocess.run([sys.executable, "-m", "dkbench.cli", "reproduce", f"run={run}", f"into={tmp_path / 'b'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("REPRODUCED"), proc.stderr[-2000:]
    record = json.loads((tmp_path / "b/runs/adhoc/probe_seg/unet__anatomical_postprocess/seed_0/"
                         "reproduction.json").read_text())
    assert record["agrees"] and record["compared"] == record["identical"] > 0
    baseline = tmp_path / "b/runs/adhoc/probe_seg/unet__baseline/seed_0"
    assert (baseline / "DONE").is_file() and (baseline / "csv/metrics.csv").is_file()


def test_comparison_counts_nan_as_equal_and_names_missing_metrics():
    out = compare_metrics({"test/a": float("nan"), "val/b": 1.0, "test/c": 2.0, "wall_time_s": 5.0,
                           "selection": {"best_epoch": 3}},
                          {"test/a": float("nan"), "val/b": 1.0, "selection": {"best_epoch": 4}})
    assert out["missing"] == ["test/c"] and out["differ"] == {} and out["compared"] == 1
    assert out["selected_epoch"] == {"recorded": 3, "now": 4}


def test_bad_requests_are_one_line_errors(moved_run, tmp_path, capsys):
    _, run = moved_run
    cases = [(["reproduce"], "run=<run folder>"),
             (["reproduce", f"run={tmp_path}"], "not a finished run"),
             (["reproduce", f"run={run}", "tolerance=abc"], "tolerance='abc'"),
             (["reproduce", f"run={run}", "tolerance=-1"], "must be ≥ 0"),
             (["reproduce", f"run={run}", "seed=3"], "not seed"),
             (["reproduce", f"run={run}", f"into={run.parents[4]}"], "run's own folder")]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
