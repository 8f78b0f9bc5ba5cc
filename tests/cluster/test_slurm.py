"""Sweeps through a real SLURM cluster (issue 17): `hydra/launcher=slurm_local` on a single-node cluster.

The module fixture runs `scripts/local_slurm.sh start` (apt-installs what is missing, then munged, MariaDB,
slurmdbd, slurmctld and slurmd with a state folder of their own; needs root, as CI has) and `stop` at the end.
A cluster that does not start fails the tests with the script's output and its daemons' log tails — never a skip.
Clients (the CLI's submitit, and sacct/squeue/scancel here) find the cluster through SLURM_CONF.

Job records come from SLURM accounting (`sacct`, through slurmdbd): submitit needs it too, to see a job that ended
without a result (see scripts/local_slurm.sh). Timings are printed as `[slurm timing]` lines (`pytest -rP` or `-s`
shows them) and recorded as junit properties.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.common import catch_a_running_cell, cells, first_start_and_gap, run_files, spans, stamps, status

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
STATE = Path(os.environ.get("DKBENCH_SLURM_DIR", "/var/tmp/dkbench-slurm"))  # the script's state folder
SMOKE = ["suite=smoke", "ui.progress_bar=false"]
SLURM = ["hydra/launcher=slurm_local"]
#: one job at a time (by default the sweeper submits a job array, see the last test): a job's own cost in a row of
#: jobs, and a single running job to cancel
ONE_BY_ONE = ["hydra.sweeper.max_batch_size=1"]
#: cells long enough (~4 s of training) that two started together overlap whatever the skew of their start-up;
#: a 1-epoch smoke cell trains for 0.4 s, less than two workers' import times may differ
OVERLAP = ["trainer.max_epochs=10"]
#: a cell long enough to be cancelled mid-run, with a resumable last.ckpt after every epoch
EPOCHS = 30
LONG = [f"trainer.max_epochs={EPOCHS}", "checkpoint.last_every_n_epochs=1"]
#: sacct states of a job that has ended
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


@dataclass
class Cluster:
    conf: str          # its slurm.conf (SLURM_CONF for every client)
    node: str          # its only node
    start_s: float     # seconds `local_slurm.sh start` took (apt included when something was missing)

    def env(self, root: Path | None = None) -> dict[str, str]:
        # one thread per process, as the jobs get (slurm_local's setup): float sums then match the local sweep's
        env = {**os.environ, "SLURM_CONF": self.conf, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
        if root is not None:
            env["DKBENCH_ROOT"] = str(root)
        return env

    def run(self, *cmd: str) -> str:
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        return proc.stdout


def _script(action: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def slurm():
    began = time.time()
    try:
        # apt (only for missing packages) can take minutes on a fresh machine; the daemons then take seconds
        started = _script("start", timeout=900)
    except subprocess.TimeoutExpired as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        _script("stop", timeout=180)
        pytest.fail(f"scripts/local_slurm.sh start did not finish in 900 s:\n{said[-6000:]}", pytrace=False)
    start_s = time.time() - began
    if started.returncode != 0:
        _script("stop", timeout=180)  # what a failed start left running; its logs are in the output below
        pytest.fail(f"scripts/local_slurm.sh start failed (exit {started.returncode}):\n{started.stderr[-6000:]}",
                    pytrace=False)
    try:
        print(f"[slurm timing] local_slurm.sh start: {start_s:.1f} s ({started.stderr.strip().splitlines()[-2]})")
        # start is idempotent: a second call finds the cluster up and leaves it as it is
        again = _script("start", timeout=120)
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr[-3000:]
        conf = re.search(r"export SLURM_CONF=(\S+)", _script("env", timeout=30).stdout).group(1)
        node = subprocess.run(["sinfo", "-h", "-o", "%N"], env={**os.environ, "SLURM_CONF": conf},
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        yield Cluster(conf, node, start_s)
    finally:
        stopped = _script("stop", timeout=180)
        assert stopped.returncode == 0, f"scripts/local_slurm.sh stop failed:\n{stopped.stderr[-3000:]}"
        assert not STATE.exists(), f"stop left {STATE} behind"


# --- helpers ------------------------------------------------------------------------------------------------------
def dkbench(cluster: Cluster, root: Path, *args: str, timeout: int = 600) -> tuple[str, float]:
    """Run `dkbench ARGS` under root (DKBENCH_ROOT), fail with its output if it fails; (stdout, seconds)."""
    began = time.time()
    proc = subprocess.run([sys.executable, "-m", "dkbench.cli", *args], cwd=root, env=cluster.env(root),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"dkbench {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, time.time() - began










def jobs_of(root: Path) -> dict[str, Path]:
    """SLURM job id → the cell it finished, from submitit's folders (runs/<suite>/.submitit/<job id>/, and for a job
    array one per task, <array id>_<task>/, beside the array's own): each job's stdout names the run folder it
    finished (none for a job that was cancelled)."""
    jobs = {}
    for log in sorted(root.glob("runs/*/.submitit/*/*_0_log.out")):
        folder, out = log.parent, log.read_text()
        done = re.findall(r"\] - finished (\S+/seed_\d+):", out)
        assert len(done) <= 1, f"job {folder.name} finished {done} (one cell per job expected)"
        if done:
            jobs[folder.name] = Path(done[0])
    return jobs


def sacct(cluster: Cluster, job_ids: list[str], timeout: float = 60) -> dict[str, dict[str, str]]:
    """sacct's records of these jobs and their steps (JobID → fields), once every job has ended there:
    slurmctld hands records to slurmdbd asynchronously."""
    fields = "JobID,JobName,State,ExitCode,NodeList,Submit,Start,End,ElapsedRaw"
    deadline = time.time() + timeout
    while True:
        out = cluster.run("sacct", "--parsable2", "--noheader", "-o", fields, *(f"-j{j}" for j in job_ids))
        rows = {r["JobID"]: r for r in (dict(zip(fields.split(","), line.split("|"))) for line in out.splitlines())}
        if all(j in rows and rows[j]["State"].split()[0] in ENDED for j in job_ids) or time.time() > deadline:
            return rows
        time.sleep(0.5)


def seconds(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))






# --- tests --------------------------------------------------------------------------------------------------------
def test_smoke_sweep_runs_every_cell_as_a_slurm_job_like_a_local_sweep(slurm, tmp_path, record_property):
    slurm_root, local_root = tmp_path / "slurm", tmp_path / "local"
    slurm_root.mkdir(), local_root.mkdir()

    slurm_began = time.time()
    out, slurm_s = dkbench(slurm, slurm_root, "sweep", *SMOKE, *SLURM, *ONE_BY_ONE)
    assert "sweep finished: 3 done, 0 failed" in out, out[-3000:]
    assert {k: status(v) for k, v in cells(slurm_root).items()} == {f"seed_{k}": "done" for k in range(3)}

    # one SLURM job per cell, each recorded by accounting as COMPLETED on this cluster's node under dkbench's job
    # name; its program (step 0, submitit's `python -m submitit.core._submit`) ran through srun
    jobs = jobs_of(slurm_root)
    submitted = [p.parent.name for p in slurm_root.glob("runs/smoke/.submitit/*/*_0_log.out")]
    assert len(submitted) == 3 and sorted(jobs) == sorted(submitted), (submitted, jobs)
    assert sorted(jobs.values()) == sorted(cells(slurm_root).values()), jobs
    records = sacct(slurm, list(jobs))
    for job in jobs:
        assert records[job]["JobName"] == "dkbench_smoke", records[job]
        assert records[job]["State"] == "COMPLETED" and records[job]["ExitCode"] == "0:0", records[job]
        assert records[job]["NodeList"] == slurm.node
        assert records[f"{job}.0"]["JobName"] == "python" and records[f"{job}.0"]["State"] == "COMPLETED"

    # the same sweep with the basic launcher (every cell in the sweep's own process, one after the other)
    local_began = time.time()
    _, local_s = dkbench(slurm, local_root, "sweep", *SMOKE)
    assert run_files(slurm_root) == run_files(local_root)  # the same run folders, file for file
    assert all(f"smoke/probe/tinycnn__baseline/seed_{k}/{name}" in run_files(slurm_root)
               for k in range(3) for name in ("status.json", "DONE", "metrics.json"))

    for root in (slurm_root, local_root):
        dkbench(slurm, root, "report", *SMOKE)
    slurm_long = (slurm_root / "reports/smoke/runs_long.csv").read_text()
    assert {line.split(",")[4] for line in slurm_long.splitlines()[1:] if ",done," in line} == {"0", "1", "2"}
    assert slurm_long == (local_root / "reports/smoke/runs_long.csv").read_text()  # identical values (CPU)
    assert (slurm_root / "reports/smoke/leaderboard.csv").read_text() == \
        (local_root / "reports/smoke/leaderboard.csv").read_text()

    slurm_first, slurm_gap = first_start_and_gap(slurm_root, slurm_began)
    local_first, local_gap = first_start_and_gap(local_root, local_began)
    queued = [seconds(records[j]["Start"]) - seconds(records[j]["Submit"]) for j in jobs]
    print(f"[slurm timing] smoke sweep (3 cells, 1 epoch): slurm_local {slurm_s:.1f} s, basic launcher {local_s:.1f} s "
          f"({(slurm_s - local_s) / 3:+.1f} s per job); first cell trained after {slurm_first:.1f} s (slurm: sbatch, "
          f"a job importing the stack) vs {local_first:.1f} s; one cell's end to the next one's start: slurm "
          f"{slurm_gap:.2f} s, basic {local_gap:.2f} s; submit→start in the queue {max(queued):.0f} s at most "
          f"(sacct, 1 s resolution); jobs' elapsed {[int(records[j]['ElapsedRaw']) for j in jobs]} s")
    record_property("slurm_start_s", round(slurm.start_s, 1))
    record_property("slurm_sweep_s", round(slurm_s, 1))
    record_property("local_sweep_s", round(local_s, 1))
    record_property("slurm_gap_s", round(slurm_gap, 2))


def test_scancel_mid_run_then_the_rerun_skips_finished_cells_and_resumes_the_cancelled_one(slurm, tmp_path):
    """scancel sends SIGTERM to the job's processes (KillWait before SIGKILL): dkbench's handler records the cell
    as `interrupted`, the job returns that result, and the sweep stops launching (exit 128+SIGTERM), with the next
    cell never submitted. The rerun skips the finished cell and resumes the cancelled one from its last.ckpt."""
    import torch

    args = ["sweep", *SMOKE, *SLURM, *ONE_BY_ONE, *LONG]
    log = tmp_path / "sweep.out"
    with log.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "dkbench.cli", *args], cwd=tmp_path, env=slurm.env(tmp_path),
                                stdout=stdout, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    victim = catch_a_running_cell(proc, tmp_path, log)
    finished = {k: stamps(v) for k, v in cells(tmp_path).items() if (v / "DONE").exists()}
    name = f"dkbench_{victim.parents[2].name}"  # slurm_local's job name: dkbench_<suite folder>
    running_jobs = [line.split("|")[0] for line in
                    slurm.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%j").splitlines() if line.endswith(f"|{name}")]
    assert len(running_jobs) == 1, f"cells run one job at a time with a batch of 1, found {running_jobs}"
    cancelled_at = time.time()
    slurm.run("scancel", *running_jobs)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the sweep did not end within 120 s of scancel:\n{log.read_text()[-3000:]}")
    exit_s = time.time() - cancelled_at
    out = log.read_text()

    # SIGTERM reached the run: recorded, resumable, the job's program exited by itself (step COMPLETED) so submitit
    # got its result, and the sweep launched nothing more
    assert proc.returncode == 128 + signal.SIGTERM, f"exit {proc.returncode}\n{out[-3000:]}"
    assert f"interrupted probe/tinycnn__baseline/{victim.name}" in out and "stopped by SIGTERM" in out, out[-3000:]
    record = json.loads((victim / "status.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM", record
    assert (victim / "checkpoints/last.ckpt").exists() and not (victim / "DONE").exists()
    epoch = torch.load(victim / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert 0 <= epoch < EPOCHS - 1  # Lightning numbers epochs from 0: the epoch the checkpoint finished
    assert len(cells(tmp_path)) == len(finished) + 1, "a cell was launched after the interruption"
    records = sacct(slurm, running_jobs)
    job = running_jobs[0]
    assert records[job]["State"].startswith("CANCELLED"), records[job]
    assert records[f"{job}.0"]["State"] == "COMPLETED", records  # srun's step: python exited 0 after SIGTERM

    again, rerun_s = dkbench(slurm, tmp_path, *args)
    assert f"{len(finished)} already done (skipped)" in again, again[-3000:]
    assert f"sweep finished: {3 - len(finished)} done, 0 failed" in again
    assert {k: status(v) for k, v in cells(tmp_path).items()} == {f"seed_{k}": "done" for k in range(3)}
    for key, before in finished.items():  # not recomputed: every file keeps its mtime
        assert stamps(cells(tmp_path)[key]) == before
    train_log = (victim / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {victim}/checkpoints/last.ckpt" in train_log, train_log[-2000:]
    metrics = json.loads((victim / "metrics.json").read_text())
    assert metrics["epochs_trained"] == EPOCHS
    rows = (victim / "csv/metrics.csv").read_text().splitlines()  # epochs before the cancel kept, the rest resumed
    header = rows[0].split(",")
    epochs = {int(r.split(",")[0]) for r in rows[1:] if r.split(",")[0] and r.split(",")[header.index("val/auroc")]}
    assert epochs == set(range(EPOCHS)), sorted(epochs)
    resumed = [j for j, run in jobs_of(tmp_path).items() if run == victim]
    assert len(resumed) == 1 and resumed[0] != job  # finished by a new job
    print(f"[slurm timing] scancel → sweep exited in {exit_s:.1f} s ({victim.name} interrupted with last.ckpt at "
          f"epoch {epoch}); rerun of {3 - len(finished)} cells ({EPOCHS} epochs): {rerun_s:.1f} s")


def test_by_default_the_cells_go_as_one_job_array_two_at_a_time(slurm, tmp_path):
    """With no hydra.sweeper.max_batch_size, the dkbench sweeper hands submitit_slurm up to 4 × array_parallelism
    cells per launch (suite_sweeper.batch_size): the smoke suite's 3 cells are one job array, and slurm_local's
    array_parallelism (2) lets two run side by side, the third when one ends."""
    out, array_s = dkbench(slurm, tmp_path, "sweep", *SMOKE, *SLURM, *OVERLAP)
    assert "sweep finished: 3 done, 0 failed" in out, out[-3000:]
    jobs = jobs_of(tmp_path)
    array = {j.split("_")[0] for j in jobs}
    assert len(array) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1", "2"], jobs
    records = sacct(slurm, list(jobs))
    assert all(records[j]["State"] == "COMPLETED" for j in jobs), records
    (_, e0), (s1, e1), (s2, _) = spans(tmp_path)
    assert s1 < e0, f"the first two cells did not overlap: {spans(tmp_path)}"
    assert s2 >= min(e0, e1), f"three cells ran at once: {spans(tmp_path)}"
    print(f"[slurm timing] smoke sweep as one job array, 2 cells at once: {array_s:.1f} s")
