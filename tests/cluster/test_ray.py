"""Sweeps through a real Ray cluster (issue 17): `hydra/launcher=ray_local` on a local head node.

The Ray stack conflicts with the default environment (see scripts/ray_env.sh), so the CLI runs from
`.venv-ray` (env RAY_VENV), which the fixture builds or updates with scripts/ray_env.sh (≈ 50–60 s
when missing, nothing when up to date). The module fixture then starts `ray start --head --num-cpus 2`
with a temp dir and ports of its own and stops exactly those processes at the end (by process group,
never `ray stop`, which would also stop any other Ray cluster of the machine). A cluster that does not
start fails the tests with Ray's own output, as does an environment that does not build.

Timings are printed as `[ray timing]` lines (`pytest -rP` or `-s` shows them) and recorded as junit
properties.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.common import catch_a_running_cell, cells, first_start_and_gap, run_files, spans, stamps, status

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("RAY_VENV", REPO / ".venv-ray"))
PY = VENV / "bin" / "python"
RAY = VENV / "bin" / "ray"
SMOKE = ["suite=smoke", "ui.progress_bar=false"]
#: one task at a time (by default every pending cell is queued at once, see the last test): a task's own cost in a
#: row of tasks, and a single running cell to kill
ONE_BY_ONE = ["hydra.sweeper.max_batch_size=1"]
#: cells long enough (~4 s of training) that two started together overlap whatever the skew of their start-up;
#: a 1-epoch smoke cell trains for 0.4 s, less than two workers' import times may differ
OVERLAP = ["trainer.max_epochs=10"]
#: a cell long enough to be killed mid-run, with a resumable last.ckpt after every epoch
LONG = ["trainer.max_epochs=30", "checkpoint.last_every_n_epochs=1"]
TASK = ":task_name:_run_job"  # the line Ray writes into a worker's log before each task it runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, temp: Path, address: str, pgid: int, start_s: float):
        self.temp, self.address, self.pgid, self.start_s = temp, address, pgid, start_s

    @property
    def logs(self) -> Path:
        return self.temp / "session_latest" / "logs"

    def worker_log(self, pid: int) -> Path | None:
        """The log of the Ray worker process `pid` (worker-<id>-<job>-<pid>.out), if it is one."""
        return next(iter(self.logs.glob(f"worker-*-{pid}.out")), None)

    def tasks_run(self) -> int:
        """Tasks that Ray's workers have started so far (all jobs)."""
        return sum(p.read_text(errors="replace").count(TASK) for p in self.logs.glob("worker-*.out"))

    def env(self, root: Path, **extra: str) -> dict[str, str]:
        # RAY_ADDRESS wins over ray_local's `address: auto`: the driver joins this cluster, not another one
        return {**os.environ, "DKBENCH_ROOT": str(root), "WANDB_MODE": "offline", "RAY_ADDRESS": self.address,
                "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _stop(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the cluster's process group, SIGKILL what is left after `grace_s` (gcs_server ignores TERM
    for ~15 s, as `ray stop` knows)."""
    def alive() -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if not alive():
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline and alive():
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster():
    # builds the env when missing, updates it when pyproject.toml changed, returns at once otherwise
    began = time.time()
    built = subprocess.run(["bash", str(REPO / "scripts" / "ray_env.sh")], check=False, cwd=REPO,
                           capture_output=True, text=True, timeout=1800, env={**os.environ, "RAY_VENV": str(VENV)})
    if built.returncode != 0 or not PY.exists():
        pytest.fail(f"scripts/ray_env.sh could not build {VENV}:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    said = next((line for line in built.stdout.splitlines() if line.startswith("ray_env:")), "")
    print(f"[ray timing] scripts/ray_env.sh: {time.time() - began:.0f} s ({said})")
    # short and private: Ray's unix sockets live under the temp dir (107-character limit)
    temp = Path(tempfile.mkdtemp(prefix="dkray-", dir="/tmp"))
    cmd = [str(RAY), "start", "--head", "--num-cpus", "2", "--disable-usage-stats", "--temp-dir", str(temp),
           "--port", "0", "--include-dashboard=false", "--dashboard-port", str(_free_port()),
           "--ray-client-server-port", str(_free_port())]
    began = time.time()
    # its own session: every process `ray start` leaves behind (gcs_server, raylet, workers) is in this group
    proc = subprocess.Popen(cmd, cwd=temp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        _stop(proc.pid)
        pytest.fail(f"`ray start --head` did not finish within 180 s: {' '.join(cmd)}")
    started = time.time() - began
    address_file = temp / "ray_current_cluster"
    if proc.returncode != 0 or not address_file.exists():
        _stop(proc.pid)
        pytest.fail(f"`ray start --head` failed (exit {proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    print(f"[ray timing] ray start --head --num-cpus 2: {started:.1f} s")
    cluster = RayCluster(temp, address_file.read_text().strip(), proc.pid, started)
    try:
        yield cluster
    finally:
        _stop(proc.pid)
        left = [p for p in Path("/proc").glob("[0-9]*") if _in_group(p, proc.pid)]
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {[p.name for p in left]}"


def _in_group(proc_dir: Path, pgid: int) -> bool:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid
    except (OSError, IndexError, ValueError):
        return False


def dkbench(root: Path, env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(PY), "-m", "dkbench.cli", *args], check=False, cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args[3:])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout






def lock_pid(run: Path) -> int:
    """The pid of the process that ran (or runs) the cell: its .lock holds "pid N on host"."""
    text = (run / ".lock").read_text()
    match = re.match(r"pid (\d+) on ", text)
    assert match, f"{run / '.lock'} holds {text!r}"
    return int(match.group(1))






def test_smoke_sweep_runs_every_cell_as_a_ray_task_like_a_local_sweep(ray_cluster, tmp_path, record_property):
    ray_root, local_root = tmp_path / "ray", tmp_path / "local"
    ray_root.mkdir(), local_root.mkdir()
    tasks_before = ray_cluster.tasks_run()

    began = ray_began = time.time()
    proc = subprocess.Popen([str(PY), "-m", "dkbench.cli", "sweep", *SMOKE, "hydra/launcher=ray_local", *ONE_BY_ONE],
                            cwd=ray_root,
                            env=ray_cluster.env(ray_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    ray_s = time.time() - began
    assert proc.returncode == 0, f"ray sweep failed:\n{out[-3000:]}\n{err[-3000:]}"
    assert "sweep finished: 3 done, 0 failed" in out, out[-3000:]
    assert f"Connecting to existing Ray cluster at address: {ray_cluster.address}" in err, err[-2000:]

    # Ray ran them: each cell's process is a Ray worker of this cluster that ran `_run_job`, not the driver
    ray_cells = cells(ray_root)
    assert sorted(ray_cells) == ["seed_0", "seed_1", "seed_2"]
    for name, run in ray_cells.items():
        assert status(run) == "done"
        pid = lock_pid(run)
        assert pid != proc.pid, f"{name} ran in the sweep's own process"
        log = ray_cluster.worker_log(pid)
        assert log is not None and TASK in log.read_text(), f"{name}: pid {pid} is no Ray worker of this cluster"
    assert ray_cluster.tasks_run() - tasks_before == 3  # one Ray task per cell

    # the same sweep with the basic (in-process) launcher; one thread as in ray_local's tasks (with 2
    # threads float sums differ in the 8th digit: measured on test/attention_overlap)
    began = local_began = time.time()
    ok(dkbench(local_root, ray_cluster.env(local_root, OMP_NUM_THREADS="1"), "sweep", *SMOKE))
    local_s = time.time() - began
    assert {lock_pid(r) for r in cells(local_root).values()} != {lock_pid(r) for r in ray_cells.values()}
    assert run_files(ray_root) == run_files(local_root)  # the same run folders, file for file

    for root in (ray_root, local_root):
        ok(dkbench(root, ray_cluster.env(root), "report", *SMOKE))
    ray_long = (ray_root / "reports/smoke/runs_long.csv").read_text()
    assert {line.split(",")[4] for line in ray_long.splitlines()[1:] if ",done," in line} == {"0", "1", "2"}
    assert ray_long == (local_root / "reports/smoke/runs_long.csv").read_text()  # identical values (CPU)

    ray_first, ray_gap = first_start_and_gap(ray_root, ray_began)
    local_first, local_gap = first_start_and_gap(local_root, local_began)
    print(f"[ray timing] smoke sweep (3 cells): ray_local {ray_s:.1f} s, basic launcher {local_s:.1f} s "
          f"({(ray_s - local_s) / 3:+.1f} s per job on average); first cell started after {ray_first:.1f} s (ray: "
          f"ray.init + a new worker importing the stack) vs {local_first:.1f} s; from one cell's end to the next "
          f"one's start: ray {ray_gap:.2f} s, basic {local_gap:.2f} s; ray start {ray_cluster.start_s:.1f} s")
    record_property("ray_start_s", round(ray_cluster.start_s, 1))
    record_property("ray_sweep_s", round(ray_s, 1))
    record_property("local_sweep_s", round(local_s, 1))




def _kill_a_running_cell(cluster: RayCluster, root: Path, args: list[str]):
    """Start the sweep, wait until one cell is done and another one runs with a last.ckpt, SIGKILL
    the Ray worker that runs it (pid from its .lock). Returns (sweep process, its stdout and stderr,
    finished cells' stamps, the killed cell, the killed pid, the epoch of its last.ckpt)."""
    import torch

    out, err = root / "sweep.out", root / "sweep.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([str(PY), "-m", "dkbench.cli", *args], cwd=root, env=cluster.env(root),
                                stdout=stdout, stderr=stderr, text=True, start_new_session=True)
    victim = catch_a_running_cell(proc, root, err)
    pid = lock_pid(victim)
    assert pid != proc.pid and cluster.worker_log(pid) is not None, f"{victim} is not run by a Ray worker (pid {pid})"
    os.kill(pid, signal.SIGKILL)
    # the worker is dead: its last.ckpt is final (written atomically), read the epoch it holds
    epoch = torch.load(victim / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["epoch"]
    finished = {k: stamps(v) for k, v in cells(root).items() if (v / "DONE").exists()}
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the sweep did not end within 300 s after its worker was killed")
    return proc, out.read_text(), err.read_text(), finished, victim, pid, epoch


def _assert_resumed(cluster: RayCluster, run: Path, killed_pid: int, epoch: int) -> None:
    assert status(run) == "done"
    log = (run / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {run}/checkpoints/last.ckpt" in log, log[-2000:]
    pid = lock_pid(run)
    assert pid != killed_pid and cluster.worker_log(pid) is not None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 30
    # the epochs before the kill were kept (CSV log), the rest trained after the resume
    rows = (run / "csv/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {int(r.split(",")[0]) for r in rows[1:] if r.split(",")[0] and r.split(",")[header.index("val/auroc")]}
    assert epochs == set(range(30)), sorted(epochs)
    print(f"[ray] {run.name}: killed (pid {killed_pid}) with last.ckpt at epoch {epoch}, resumed by pid {pid}")


def test_killed_worker_without_retries_is_a_failed_cell_and_the_rerun_resumes_it(ray_cluster, tmp_path):
    """max_retries=0: the dead worker's task fails and ray.get raises in the driver, i.e. in the
    launcher: the dkbench sweeper records that cell as failed, runs the remaining one and exits 1. The rerun skips
    the finished cells and resumes the killed one from its last.ckpt."""
    args = ["sweep", *SMOKE, "hydra/launcher=ray_local", *ONE_BY_ONE, *LONG, "hydra.launcher.ray.remote.max_retries=0"]
    proc, out, err, _, victim, pid, epoch = _kill_a_running_cell(ray_cluster, tmp_path, args)
    # ray.get raised in the driver: the sweeper records the lost cell as failed (one line, no traceback), goes on
    # with the next cell and exits 1
    assert proc.returncode == 1, f"{out[-2000:]}\n{err[-3000:]}"
    lost = re.search(rf"\] failed +probe/tinycnn__baseline/{victim.name} +the launcher lost this job "
                     r"\((\w+): .*\); rerun the sweep", out)
    assert lost and lost.group(1) in ("WorkerCrashedError", "RayTaskError"), out[-3000:]
    assert "sweep finished: 2 done, 1 failed" in out and "Traceback" not in err, f"{out[-2000:]}\n{err[-3000:]}"
    assert status(victim) == "running" and not (victim / "DONE").exists()  # SIGKILL: no chance to record
    finished = {k: stamps(v) for k, v in cells(tmp_path).items() if (v / "DONE").exists()}
    assert len(finished) == 2 and victim.name not in finished

    began = time.time()
    again = ok(dkbench(tmp_path, ray_cluster.env(tmp_path), *args))
    rerun_s = time.time() - began
    assert f"{len(finished)} already done (skipped)" in again, again[-3000:]
    assert f"sweep finished: {3 - len(finished)} done, 0 failed" in again
    assert {k: status(v) for k, v in cells(tmp_path).items()} == {f"seed_{k}": "done" for k in range(3)}
    for name, before in finished.items():  # not recomputed: every file keeps its mtime
        assert stamps(cells(tmp_path)[name]) == before
    _assert_resumed(ray_cluster, victim, pid, epoch)
    print(f"[ray timing] rerun after the kill ({3 - len(finished)} cells of 30 epochs): {rerun_s:.1f} s")


def test_killed_worker_is_retried_by_ray_and_resumes_within_the_sweep(ray_cluster, tmp_path):
    """ray_local's default (max_retries: 2): Ray reruns the dead worker's task in a new worker, which
    finds the cell's lock released by the kernel and resumes from last.ckpt; the sweep ends with every
    cell done, and a rerun has nothing to do."""
    args = ["sweep", *SMOKE, "hydra/launcher=ray_local", *ONE_BY_ONE, *LONG]
    proc, out, err, finished, victim, pid, epoch = _kill_a_running_cell(ray_cluster, tmp_path, args)
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert "retries remaining, so the task will be retried" in out + err, (out + err)[-3000:]
    assert "sweep finished: 3 done, 0 failed" in out
    for name, before in finished.items():
        assert stamps(cells(tmp_path)[name]) == before
    _assert_resumed(ray_cluster, victim, pid, epoch)
    again = ok(dkbench(tmp_path, ray_cluster.env(tmp_path), *args))
    assert "3 already done (skipped)" in again and "0 to run" in again, again[-2000:]


def test_by_default_every_cell_is_queued_and_ray_runs_two_at_once(ray_cluster, tmp_path):
    """With no hydra.sweeper.max_batch_size, the sweeper hands Ray every pending cell in one launch
    (suite_sweeper.batch_size); the 2-CPU cluster with num_cpus 1 per task runs two side by side."""
    out = ok(dkbench(tmp_path, ray_cluster.env(tmp_path), "sweep", *SMOKE, "hydra/launcher=ray_local", *OVERLAP))
    assert "sweep finished: 3 done, 0 failed" in out, out[-3000:]
    assert "[3/3] done" in out and "[1/3]" in out
    (_, e0), (s1, e1), (s2, _) = spans(tmp_path)
    assert s1 < e0, f"the first two cells did not overlap: {spans(tmp_path)}"
    assert s2 >= min(e0, e1), f"three cells ran at once on 2 CPUs: {spans(tmp_path)}"
