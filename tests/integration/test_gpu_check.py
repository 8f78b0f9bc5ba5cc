"""`make gpu-check` must work the first time it meets a GPU: its CPU rehearsal (`--small`) runs
every section through the same code, sweeps and run folders, and writes the same JSON files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_file


@pytest.mark.data
def test_gpu_check_small_runs_every_section_on_cpu(tmp_path, data_dir):
    require_file(data_dir, "medmnist/breastmnist.npz")
    env = {**os.environ, "DKBENCH_DATA": str(data_dir), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--small", "--out", str(tmp_path)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("gpu_*.json")}
    assert set(results) == {"gpu_throughput", "gpu_packing", "gpu_demo", "gpu_medmnist"}
    assert all(r["ok"] and r["small"] for r in results.values())
    assert results["gpu_throughput"]["ratio_dkbench_over_plain"] > 0
    packing = results["gpu_packing"]["rows"]
    assert [r["runs"] for r in packing] == [1, 2] and all(r["runs_done"] == r["runs"] for r in packing)
    assert results["gpu_demo"]["counts"] == {"done": 4}  # every picked strategy ran, none failed
    (row,) = results["gpu_medmnist"]["rows"]
    assert row["status"] == "done" and 0.0 <= row["test_auc"] <= 1.0


def test_gpu_check_3d_section_rehearses_on_cpu(tmp_path, data_dir):
    """The opt-in 3D section (a GPU call of its own) runs its real path on CPU: tinycnn, 1 epoch."""
    require_file(data_dir, "medmnist/vesselmnist3d.npz")
    env = {**os.environ, "DKBENCH_DATA": str(data_dir), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--small", "--sections", "medmnist3d",
         "--out", str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_medmnist3d.json").read_text())
    (row,) = result["rows"]
    assert row["dataset"] == "vesselmnist3d" and row["status"] == "done" and row["paper_auc_acc"] == [0.874, 0.877]


def test_gpu_check_rejects_an_unknown_section(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--sections", "warp",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown section(s) ['warp']" in done.stderr
    assert "Traceback" not in done.stderr
