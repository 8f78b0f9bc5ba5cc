"""The sweep runner through the real CLI: resume after SIGKILL, parallel launchers, optuna.

Each test starts `python -m dkbench.cli` processes (the import of the stack costs seconds),
on the `smoke` suite: a 96-image probe, tinycnn, one epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SMOKE = ["suite=smoke", "ui.progress_bar=false"]


def cli(tmp_path: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "dkbench.cli", *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dkbench {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def cells(tmp_path: Path, suite: str = "smoke") -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sorted((tmp_path / "runs" / suite).glob("*/*/seed_*/status.json"))}


def statuses(tmp_path: Path, suite: str = "smoke") -> dict[str, str]:
    return {k: json.loads((v / "status.json").read_text())["status"] for k, v in cells(tmp_path, suite).items()}


def test_sigkill_midway_then_resume_recomputes_nothing_finished(tmp_path):
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dkbench.cli", "sweep", *SMOKE], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and "done" not in statuses(tmp_path).values():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = statuses(tmp_path)
    finished = {k: v for k, v in cells(tmp_path).items() if before[k] == "done"}
    assert finished and len(finished) < 3, f"kill should land mid-sweep, got {before}"
    stamps = {k: {f.name: f.stat().st_mtime_ns for f in v.iterdir() if f.is_file()} for k, v in finished.items()}

    out = cli(tmp_path, "sweep", *SMOKE).stdout
    assert f"{len(finished)} already done (skipped)" in out
    assert statuses(tmp_path) == {"seed_0": "done", "seed_1": "done", "seed_2": "done"}
    for key, files in stamps.items():  # finished cells untouched, byte for byte in time
        assert {f.name: f.stat().st_mtime_ns for f in cells(tmp_path)[key].iterdir() if f.is_file()} == files

    report = cli(tmp_path, "report", *SMOKE, f"publish={tmp_path / 'docs'}").stdout
    assert "missing" in report.lower() or "done" in report.lower()
    assert (tmp_path / "reports/smoke/leaderboard.md").exists()
    published = (tmp_path / "docs/smoke_leaderboard.md").read_text()  # publish=: links renamed, files beside it
    assert "](smoke_heatmap_delta.png)" in published and (tmp_path / "docs/smoke_heatmap_delta.png").is_file()


def test_joblib_runs_two_cells_at_once(tmp_path):
    # 10 epochs (~4 s of training): a 1-epoch cell trains for 0.4 s, less than the two workers' start-up
    # (importing the stack) may differ by on a loaded machine, so spans could miss each other while both ran
    cli(tmp_path, "sweep", *SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "suite.seeds=[0,1]",
        "trainer.max_epochs=10")
    spans = []
    for run in cells(tmp_path, "smoke@trainer.max_epochs:10").values():
        metrics = json.loads((run / "metrics.json").read_text())
        spans.append((metrics["started_at"], metrics["finished_at"]))
    assert len(spans) == 2
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"cells did not overlap: {spans}"


def test_submitit_local_sweep(tmp_path):
    cli(tmp_path, "sweep", *SMOKE, "hydra/launcher=submitit_local", "suite.seeds=[0]",
        "hydra.launcher.timeout_min=10")
    assert statuses(tmp_path) == {"seed_0": "done"}


def test_optuna_search_runs_three_trials_as_run_folders(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed")
    out = cli(tmp_path, "train", "-m", "hparams_search=probe_lr", "hydra.sweeper.n_trials=3",
              "trainer.max_epochs=1", "dataset.options.n_train=96", "dataset.options.n_val=48",
              "dataset.options.n_test=48", "data.batch_size=32", "ui.progress_bar=false")
    trials = sorted((tmp_path / "runs/hps_probe_lr/probe").glob("tinycnn__baseline@trial*/seed_0/DONE"))
    assert len(trials) == 3, out.stdout[-2000:]
    study = tmp_path / "runs/hps_probe_lr/optuna/probe__tinycnn__baseline"
    assert (study / "optimization_results.yaml").exists(), "each study keeps its own results file"
    assert "probe__tinycnn__baseline" in (study / "optimization_results.yaml").read_text() + out.stdout + out.stderr


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A negative weight decay makes the optimizer raise in the probe_3class cell only (a setting the
    pre-flight does not check); the probe cell finishes."""
    proc = cli(tmp_path, "sweep", *SMOKE, "suite.seeds=[0]", "suite.datasets=[probe,probe_3class]",
               '+suite.per_dataset.probe_3class=["model.optimizer.weight_decay=-1"]', check=False)
    assert "1 done, 1 failed" in proc.stdout
    # the sweep goes on, but says so in its exit status (one line on stderr, no traceback)
    assert proc.returncode == 1 and "1 of 2 cell(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    status = json.loads((tmp_path / "runs/smoke/probe_3class/tinycnn__baseline/seed_0/status.json").read_text())
    assert status["status"] == "failed" and "weight_decay" in status["error"]
    assert statuses(tmp_path)["seed_0"] in ("done", "failed")
    assert (tmp_path / "runs/smoke/probe/tinycnn__baseline/seed_0/DONE").exists()


def test_prestage_runs_are_planned_once_and_run_before_their_cells(tmp_path):
    """curriculum's teacher is a run folder of its own: the sweep lists and trains it first (as
    a job), the cells then load it; a second sweep finds everything done."""
    teacher = ["suite.strategies=[curriculum]", "suite.baseline=curriculum", "suite.seeds=[0,1]",
               "+suite.per_strategy.curriculum=['strategy.options.difficulty=teacher','strategy.options.teacher_epochs=1']"]
    out = cli(tmp_path, "sweep", *SMOKE, *teacher, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2").stdout
    assert "2 pre-stage run(s) first" in out and out.count("[pre-stage] done") == 2, out
    teachers = sorted((tmp_path / "runs" / ".cache" / "curriculum" / "probe" / "tinycnn").glob("seed_*/metrics.json"))
    assert len(teachers) == 2
    teacher_end = max(json.loads(p.read_text())["finished_at"] for p in teachers)
    for run in cells(tmp_path).values():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["started_at"] > teacher_end  # no cell trained (or waited for) a teacher itself
        meta = json.loads((run / "metadata.json").read_text())["strategy"]
        assert meta["difficulty_source"] == "teacher" and meta["teacher"]["run_dir"].endswith(run.name)
    again = cli(tmp_path, "sweep", *SMOKE, *teacher).stdout
    assert "0 to run" in again and "pre-stage" not in again


def test_cached_artefact_prestages_are_built_before_the_cells(tmp_path):
    """roi_input_predicted's ROI predictor (one per seed) is built by jobs of its own before the
    cells start; the cells load it from the cache."""
    roi = ["suite.strategies=[roi_input_predicted]", "suite.baseline=roi_input_predicted", "suite.seeds=[0,1]",
           "+suite.per_strategy.roi_input_predicted=['strategy.options.predictor_epochs=1']"]
    out = cli(tmp_path, "sweep", *SMOKE, *roi).stdout
    assert "2 pre-stage run(s) first" in out and out.count("[pre-stage] done") == 2, out
    caches = sorted((tmp_path / "runs" / ".cache" / "roi_input").glob("*.pt"))
    assert len(caches) == 2
    built = max(p.stat().st_mtime for p in caches)
    for run in cells(tmp_path).values():
        assert json.loads((run / "metrics.json").read_text())["started_at"] > built
        stats = json.loads((run / "metadata.json").read_text())["strategy"]["roi_predictor"]
        assert stats["cache"] in {str(p) for p in caches}


def test_cells_without_their_data_are_skipped_not_failed(tmp_path):
    """A suite may use a dataset only when its file is present (the demo's BreastMNIST): its cells
    are reported as without data, on stderr in one line, and the sweep still exits 0."""
    proc = cli(tmp_path, "sweep", "suite=demo", "suite.seeds=[0]", "suite.strategies=[baseline]",
               "suite.per_strategy={}", f"paths.data_dir={tmp_path / 'no_data_here'}", "ui.progress_bar=false",
               check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 done, 0 failed, 1 without their data" in proc.stdout
    assert "1 cell(s) skipped because their data is not under paths.data_dir" in proc.stderr


def test_tuned_protocol_resumes_after_sigkill_and_reports_default_beside_tuned(tmp_path):
    """Trials are run folders: a tuned sweep killed mid-way recomputes none that finished; the
    selection then runs the suite's seeds at the chosen setting, and the report sets the tuned
    result beside the default protocol's with the chosen setting and the (bound-only) oracle."""
    # transfer_natural cannot serve tinycnn offline: recorded incompatible in both phases, never run
    both = ["suite.seeds=[0,1]", "suite.strategies=[baseline,transfer_natural]"]
    args = ["sweep", *SMOKE, "protocol=tuned", "tuning.trials=2", *both]
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "dkbench.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trials = tmp_path / "runs" / "smoke@tuning" / "probe"
    deadline = time.time() + 300
    while time.time() < deadline and not list(trials.glob("*@trial*/seed_1000/DONE")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p.parent for p in trials.glob("*@trial*/seed_1000/DONE")]
    assert len(finished) == 1, "the kill should land after the first trial"
    stamps = {f: f.stat().st_mtime_ns for run in finished for f in run.iterdir() if f.is_file()}
    assert not (tmp_path / "runs/smoke@tuned/probe/tinycnn__baseline/chosen.json").exists()  # 1 of 2 trials: no choice

    done = cli(tmp_path, *args)
    out = done.stdout
    assert "1 already done (skipped)" in out
    assert f"runs → {tmp_path / 'runs'} · reports → {tmp_path / 'reports'}" in out  # said at the start
    train_log = next(trials.glob("*@trial01/seed_1000/train.log")).read_text()
    quiet = out + done.stderr + train_log
    assert "alembic" not in quiet and "Tip:" not in quiet  # no start-up noise in the console or the run's log
    # no terminal: progress as log lines, the last epoch always (with this epoch's loss and validation)
    assert re.search(r"epoch 1/1 · train/loss \d\.\d{4} · val/auroc \d\.\d{4} \(best", train_log), train_log[-2000:]
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # the finished trial untouched
    chosen = json.loads((tmp_path / "runs/smoke@tuned/probe/tinycnn__baseline/chosen.json").read_text())
    assert chosen["trial"] in (0, 1) and chosen["selected_by"] == "val/auroc" and len(chosen["trials"]) == 2
    assert all(not k.startswith("test/") for t in chosen["trials"] for k in t)
    tuned = sorted((tmp_path / "runs/smoke@tuned/probe/tinycnn__baseline").glob("seed_*/DONE"))
    assert [p.parent.name for p in tuned] == ["seed_0", "seed_1"]
    if chosen["trial"] == 1:  # the chosen values reach the seeds' configs
        lr = chosen["params"]["model.optimizer.lr"]
        assert f"lr: {lr}" in (tuned[0].parent / "config.yaml").read_text()

    status = json.loads((tmp_path / "runs/smoke@tuned/probe/tinycnn__transfer_natural/seed_0/status.json").read_text())
    assert status["status"] == "incompatible" and "pretrained" in status["reason"]
    cli(tmp_path, "sweep", *SMOKE, *both)  # the default protocol, for the side-by-side table
    report = cli(tmp_path, "report", *SMOKE, "protocol=tuned", *both, f"publish={tmp_path / 'docs'}").stdout
    assert "Tuned protocol: default vs tuned" in report and "upper bound" in report
    assert "Tuned protocol: default vs tuned" in (tmp_path / "docs/smoke_tuned_leaderboard.md").read_text()
    table = (tmp_path / "reports/smoke@tuned/tuning.md").read_text()
    row = next(line for line in table.splitlines() if "| baseline |" in line)
    assert "(n=2)" in row and f"trial {chosen['trial']}" in row
    assert re.search(r"\| \d\.\d{3} \(trial [01]\) \|$", row), row  # the oracle read from the trials' folders
    assert "incompatible (not run)" in next(line for line in table.splitlines() if "| transfer_natural |" in line)


def test_external_test_sets_are_evaluated_once_and_reported_beside_internal(tmp_path):
    external = ["+suite.external={probe:[probe_clean]}", "suite.seeds=[0,1]"]
    refused = cli(tmp_path, "sweep", *SMOKE, *external, check=False)  # the smoke suite drops its weights
    assert refused.returncode == 2 and "need the runs' weights: drop keep_checkpoints=false" in refused.stderr
    args = ["sweep", *SMOKE, *external, "keep_checkpoints=true"]
    out = cli(tmp_path, *args).stdout
    assert "external test sets: 2 evaluated, 0 already done, 0 failed" in out
    runs = tmp_path / "runs/smoke/probe/tinycnn__baseline"
    for seed in (0, 1):
        record = json.loads((runs / f"seed_{seed}/external/probe_clean/metrics.json").read_text())
        assert record["evaluated_on"] == "probe_clean" and 0.0 <= record["test/auroc"] <= 1.0
    again = cli(tmp_path, *args).stdout
    assert "external test sets: 0 evaluated, 2 already done, 0 failed" in again  # never recomputed
    cli(tmp_path, "report", *SMOKE, *external)
    board = (tmp_path / "reports/smoke/leaderboard.md").read_text()
    assert "## External validation" in board
    row = next(line for line in board.splitlines() if line.startswith("| probe | probe_clean | tinycnn | baseline"))
    assert row.count("(n=2)") == 3  # internal, external and the paired change, each over both seeds


def test_command_line_settings_get_their_own_folder_and_report(tmp_path):
    """`dkbench sweep suite=smoke <setting>` runs into `runs/smoke@<setting>` beside the default
    runs (never superseding them), and `report` with the same setting reads that folder."""
    one = [*SMOKE, "suite.seeds=[0]"]
    cli(tmp_path, "sweep", *one)
    default = tmp_path / "runs/smoke/probe/tinycnn__baseline/seed_0"
    stamp = (default / "DONE").stat().st_mtime_ns
    cli(tmp_path, "sweep", *one, "dataset.options.signal=0.9")
    variant = tmp_path / "runs/smoke@dataset.options.signal:0.9/probe/tinycnn__baseline/seed_0"
    assert json.loads((variant / "status.json").read_text())["status"] == "done"
    assert (default / "DONE").stat().st_mtime_ns == stamp and not (default / "superseded").exists()
    assert json.loads((variant / "metadata.json").read_text())["variant"] == "@dataset.options.signal:0.9"
    out = cli(tmp_path, "report", *one, "dataset.options.signal=0.9").stdout
    assert "runs/smoke@dataset.options.signal:0.9" in out
    board = (tmp_path / "reports/smoke@dataset.options.signal:0.9/leaderboard.md").read_text()
    assert "Leaderboard: smoke@dataset.options.signal:0.9" in board


def test_a_post_hoc_strategy_shares_the_baseline_cells_network_in_a_sweep(tmp_path):
    """anatomical_postprocess's network is the baseline cell's: the sweep trains it once (as the
    pre-stage, weights kept although the suite drops checkpoints), then the post-hoc cell tests it."""
    seg = ["suite.datasets=[probe_seg]", "suite.backbones=[unet]", "suite.strategies=[baseline,anatomical_postprocess]",
           "suite.seeds=[0]", "suite.rank_metric=test/dice", "suite.metrics=[test/dice]"]
    out = cli(tmp_path, "sweep", *SMOKE, *seg).stdout
    assert "1 pre-stage run(s) first" in out, out
    base = tmp_path / "runs/smoke/probe_seg/unet__baseline/seed_0"
    post = json.loads((tmp_path / "runs/smoke/probe_seg/unet__anatomical_postprocess/seed_0/metrics.json").read_text())
    baseline = json.loads((base / "metrics.json").read_text())
    assert post["shared_training"]["run_dir"] == str(base) and (base / "checkpoints/best_weights.pt").exists()
    assert post["test/dice_raw"] == baseline["test/dice"] and post["started_at"] > baseline["finished_at"]
