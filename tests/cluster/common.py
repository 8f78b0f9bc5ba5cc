"""What the SLURM and Ray cluster tests share: reading the smoke suite's run folders, the
launcher's per-job cost, and catching a cell mid-run to kill or cancel it."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def cells(root: Path) -> dict[str, Path]:
    """seed_k → run folder, for every cell of the (only) suite folder under runs/."""
    return {p.name: p for p in sorted(root.glob("runs/*/probe/tinycnn__baseline/seed_*"))}


def status(run: Path) -> str | None:
    f = run / "status.json"
    return json.loads(f.read_text())["status"] if f.exists() else None


def run_files(root: Path) -> list[str]:
    """Every file of the run folders, relative to runs/ (submitit's own folder aside)."""
    return sorted(str(p.relative_to(root / "runs")) for p in (root / "runs").rglob("*")
                  if p.is_file() and ".submitit" not in p.parts)


def stamps(run: Path) -> dict[str, int]:
    return {str(f.relative_to(run)): f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file()}


def spans(root: Path) -> list[tuple[float, float]]:
    """(started_at, finished_at) of every cell's training, in order."""
    return sorted((m["started_at"], m["finished_at"]) for m in
                  (json.loads((r / "metrics.json").read_text()) for r in cells(root).values()))


def first_start_and_gap(root: Path, began: float) -> tuple[float, float]:
    """Seconds from the sweep command to its first cell's training, and the mean seconds from one cell's end to
    the next one's start (cells run one after the other): what the launcher costs per job once it is warm."""
    s = spans(root)
    return s[0][0] - began, sum(b[0] - a[1] for a, b in itertools.pairwise(s)) / (len(s) - 1)


def catch_a_running_cell(proc: subprocess.Popen, root: Path, log: Path | None = None) -> Path:
    """Wait until one cell is done and another runs with a last.ckpt, and return the running one;
    fail (killing the sweep) if that moment never comes."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        runs = cells(root)
        done = [r for r in runs.values() if (r / "DONE").exists()]
        running = [r for r in runs.values() if status(r) == "running" and (r / "checkpoints/last.ckpt").exists()]
        if done and running:
            return running[0]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"no cell was caught running with a last.ckpt after another one finished: "
                f"{ {k: status(v) for k, v in cells(root).items()} }\n{tail}")
