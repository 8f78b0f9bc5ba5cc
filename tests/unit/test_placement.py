"""GPU slot placement, on CPU with a faked device count (runner/placement.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dkbench.runner import placement
from dkbench.runner.compose import compose_config
from dkbench.runner.placement import Plan, Slot, acquire, choose_slot, plan_from_config, resolve_devices
from dkbench.runner.run_folder import config_hash


def make_plan(tmp_path: Path, devices: int = 4, k: int = 2, host_threads: int = 16) -> Plan:
    return Plan(tuple(str(i) for i in range(devices)), k, host_threads, tmp_path / "locks")


@pytest.fixture
def fresh_process_state(monkeypatch):
    """The module remembers this process's GPUs and pin; each test starts unpinned."""
    monkeypatch.setattr(placement, "_visible", None)
    monkeypatch.setattr(placement, "_pinned_id", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so a pin set by a test is undone
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


# --- pure logic -----------------------------------------------------------------------------------

def test_devices_resolve_against_the_visible_ones():
    visible = ["GPU-a", "GPU-b", "GPU-c"]
    assert resolve_devices("auto", visible) == visible
    assert resolve_devices(2, visible) == ["GPU-a", "GPU-b"]
    assert resolve_devices([2, 0], visible) == ["GPU-c", "GPU-a"]
    assert resolve_devices("auto", []) == [] and resolve_devices(0, visible) == []
    assert resolve_devices(4, []) == ["0", "1", "2", "3"]  # the CPU rehearsal
    with pytest.raises(ValueError, match="only 3 GPU"):
        resolve_devices(4, visible)
    with pytest.raises(ValueError, match=r"indices \[5\]"):
        resolve_devices([0, 5], visible)


def test_host_threads_split_between_concurrent_runs(tmp_path):
    assert placement.threads_per_run(16, 8) == 2
    assert placement.threads_per_run(16, 3) == 5
    assert placement.threads_per_run(2, 8) == 1  # never zero
    assert make_plan(tmp_path, devices=4, k=2, host_threads=16).threads_per_run == 2


def test_choice_spreads_over_devices_and_respects_the_pin():
    free = {(d, j) for d in range(3) for j in range(2)} - {(0, 0)}
    assert choose_slot(free) == (1, 0)  # device 0 is half busy: the least loaded wins
    assert choose_slot(free, pinned=0) == (0, 1)
    assert choose_slot(free - {(0, 1)}, pinned=0) is None
    assert choose_slot(set()) is None


def test_no_gpu_means_no_placement(fresh_process_state, monkeypatch, tmp_path):
    monkeypatch.setattr(placement, "visible_devices", lambda: [])
    node = {"devices": "auto", "runs_per_device": 4, "host_threads": "auto", "lock_dir": str(tmp_path)}
    assert plan_from_config(node, visible=[]) is None
    assert plan_from_config({**node, "devices": 0}, visible=["0", "1"]) is None
    assert plan_from_config(None) is None
    cfg = compose_config(["placement.runs_per_device=4", f"paths.runs_dir={tmp_path}"])
    with placement.placement_slot(cfg) as job_cfg:
        assert job_cfg is cfg
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not (tmp_path / ".placement").exists()


# --- the slot locks -------------------------------------------------------------------------------

def test_eight_acquirers_get_eight_slots_two_per_device_and_a_ninth_waits(tmp_path):
    plan = make_plan(tmp_path, devices=4, k=2)
    held, start = [], threading.Barrier(8)

    def take():
        start.wait()
        held.append(acquire(plan, poll_s=0.01, timeout_s=20))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots = [h.slot for h in held]
    assert len({(s.device, s.index) for s in slots}) == 8
    assert Counter(s.device_id for s in slots) == {"0": 2, "1": 2, "2": 2, "3": 2}

    ninth: list = []
    waiter = threading.Thread(target=lambda: ninth.append(acquire(plan, poll_s=0.01, max_poll_s=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert not ninth, "a ninth run must wait while all 8 slots are taken"
    freed = held.pop(3)
    freed.release()
    waiter.join(timeout=10)
    assert ninth and ninth[0].slot == freed.slot
    for h in held + ninth:
        h.release()


def test_fewer_runs_than_slots_spread_one_per_device(tmp_path):
    plan = make_plan(tmp_path, devices=4, k=2)
    held = [acquire(plan, timeout_s=5) for _ in range(4)]
    assert sorted(h.slot.device for h in held) == [0, 1, 2, 3]
    for h in held:
        h.release()


def test_a_killed_process_frees_its_slot(tmp_path):
    plan = make_plan(tmp_path, devices=1, k=1)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dkbench.runner.placement import Plan, acquire
        acquire(Plan(("0",), 1, 1, Path({str(plan.lock_dir)!r})))
        print("held", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            acquire(plan, poll_s=0.01, timeout_s=0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        acquire(plan, timeout_s=5).release()
    finally:
        holder.kill()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_forked_child_does_not_keep_the_slot(tmp_path):
    """A DataLoader-style forked worker still alive after the job must not hold the lock."""
    plan = make_plan(tmp_path, devices=1, k=1)
    held = acquire(plan, timeout_s=5)
    child = multiprocessing.get_context("fork").Process(target=_sleep, args=(5,))
    child.start()
    try:
        held.release()
        acquire(plan, timeout_s=1).release()
    finally:
        child.terminate()
        child.join()


def test_slot_folders_are_per_host_and_per_slurm_job(fresh_process_state, monkeypatch, tmp_path):
    plain = placement.lock_folder(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert placement.lock_folder(tmp_path) == plain.with_name(plain.name + "-slurm42")


# --- the job's config -----------------------------------------------------------------------------

def test_the_config_hash_ignores_where_a_run_lands(tmp_path):
    cfg = compose_config([f"paths.runs_dir={tmp_path}", "placement.devices=4", "placement.runs_per_device=2"])
    plan = plan_from_config(cfg.placement, visible=[])
    assert plan is not None and plan.slots == 8
    a = placement.placed_config(cfg, plan, Slot(0, 0, "0"))
    b = placement.placed_config(cfg, plan, Slot(3, 1, "3"))
    assert a.placement.assigned.device == "0" and b.placement.assigned.device == "3"
    assert a.threads == plan.threads_per_run and cfg.threads is None  # the job's copy only
    other = compose_config([f"paths.runs_dir={tmp_path}", "placement.devices=1", "placement.runs_per_device=8"])
    assert config_hash(a) == config_hash(b) == config_hash(cfg) == config_hash(other)
    explicit = placement.placed_config(OmegaConf.merge(cfg, {"threads": 3}), plan, Slot(0, 0, "0"))
    assert explicit.threads == 3  # an explicit `threads=` wins over the split


def test_a_job_pins_its_process_to_the_slot_device(fresh_process_state, monkeypatch, tmp_path):
    monkeypatch.setattr(placement, "visible_devices", lambda: ["5", "7"])  # two fake GPUs
    cfg = compose_config([f"paths.runs_dir={tmp_path}", "placement.runs_per_device=2", "placement.host_threads=8"])
    seen = []

    @placement.placed
    def job(job_cfg):
        seen.append((os.environ["CUDA_VISIBLE_DEVICES"], job_cfg.placement.assigned.device, job_cfg.threads))

    job(cfg)
    # the next job of this (now pinned) process stays on its GPU even when another is freer
    other = acquire(plan_from_config(cfg.placement), pinned=0, timeout_s=5)
    job(cfg)
    other.release()
    assert seen == [("5", "5", 2), ("5", "5", 2)]
    assert placement._pinned_id == "5"


def test_a_run_that_chooses_its_own_gpus_is_left_alone(fresh_process_state, monkeypatch, tmp_path):
    monkeypatch.setattr(placement, "visible_devices", lambda: ["0", "1"])
    for devices in ("2", "[1]"):
        cfg = compose_config([f"paths.runs_dir={tmp_path}", f"trainer.devices={devices}"])
        with placement.placement_slot(cfg) as job_cfg:
            assert job_cfg is cfg
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
