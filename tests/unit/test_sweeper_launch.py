"""How the suite sweeper hands cells to a launcher: batch sizes per launcher, and a launcher that
raises instead of returning (a cancelled SLURM job, a Ray worker with no retries left)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dkbench.runner.run_folder import RESULT_FILES, RunFolder
from dkbench.runner.sweep import LostJob, _outcome
from hydra_plugins.dkbench_suite_sweeper.suite_sweeper import BATCHES_PER_WORKER, SuiteSweeper, batch_size


def _config(launcher: dict) -> OmegaConf:
    return OmegaConf.create({"hydra": {"launcher": launcher}})


@pytest.mark.parametrize(("launcher", "expected"), [
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1),
    ({"_target_": "joblib", "n_jobs": 2}, 2 * BATCHES_PER_WORKER),
    ({"_target_": "joblib", "n_jobs": -1}, 1),  # "all cores" is not a count the sweeper can batch by
    ({"_target_": "submitit_slurm", "array_parallelism": 8}, 8 * BATCHES_PER_WORKER),  # one job array
    ({"_target_": "submitit_local", "timeout_min": 60}, 1),  # one local process per cell: never a crowd
    ({"_target_": "ray", "ray": {"init": {"address": "auto"}, "remote": {"num_cpus": 1}}}, 37),  # all queued
])
def test_batch_size_follows_the_launchers_parallelism(launcher, expected):
    assert batch_size(_config(launcher), pending=37) == expected


def test_an_explicit_max_batch_size_wins_and_ray_never_gets_an_empty_batch():
    assert batch_size(_config({"n_jobs": 2}), pending=37, max_batch_size=3) == 3
    assert batch_size(_config({"ray": {"remote": {}}}), pending=0) == 1


def _finish(run: RunFolder, cfg_hash: str) -> None:
    run.path.mkdir()
    for name in RESULT_FILES:
        run.write_text(name, "{}\n")  # a JSON object and a YAML mapping alike
    run.mark_done(cfg_hash)


class _RaisingLauncher:
    def __init__(self, error: Exception):
        self.error, self.calls = error, []

    def launch(self, jobs, initial_job_idx):
        self.calls.append((jobs, initial_job_idx))
        raise self.error


def test_a_launcher_that_raises_turns_its_batch_into_cells_judged_by_their_run_folders(tmp_path):
    finished, lost = RunFolder(tmp_path / "seed_0"), RunFolder(tmp_path / "seed_1")
    for run in (finished, lost):
        _finish(run, "abc123")
    lost.file("DONE").unlink()  # killed before it finished: results of earlier epochs, no DONE
    sweeper = SuiteSweeper()
    sweeper.launcher = _RaisingLauncher(RuntimeError("Job 17_1 has not produced any output (state: CANCELLED)\nmore"))

    returns = sweeper._call_launcher([["seed=0"], ["seed=1"]], 4,
                                     [(str(finished.path), "abc123"), (str(lost.path), "abc123")])

    assert sweeper.launcher.calls == [([["seed=0"], ["seed=1"]], 4)]
    done, failed = (_outcome(r) for r in returns)
    assert done["status"] == "done"
    assert failed["status"] == "failed"
    assert "RuntimeError: Job 17_1 has not produced any output (state: CANCELLED)" in failed["error"]
    assert "more" not in failed["error"] and "rerun the sweep" in failed["error"]


def test_a_done_marker_of_another_config_does_not_count(tmp_path):
    run = RunFolder(tmp_path / "seed_0")
    _finish(run, "old_hash")
    assert _outcome(LostJob(str(run.path), "new_hash", OSError("node lost")))["status"] == "failed"


def test_the_sweeps_own_interruption_is_not_swallowed():
    from dkbench.errors import RunInterrupted

    sweeper = SuiteSweeper()
    sweeper.launcher = _RaisingLauncher(RunInterrupted(15))
    with pytest.raises(RunInterrupted):
        sweeper._call_launcher([["seed=0"]], 0, [("nowhere", "x")])
