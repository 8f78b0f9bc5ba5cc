"""Packing sweep runs onto GPUs: at most k runs at once per device, spread over the devices.

One MedMNIST-size run leaves an H100 mostly idle, so a sweep runs k runs per GPU and a node
with several GPUs uses all of them (issue 16). Every job takes, before training, one of
devices × k *slots*: a non-blocking `flock` on `<lock_dir>/<host>/slot-<device>-<j>.lock`,
tried over all slots, waiting with backoff when all are taken. The kernel drops the lock when
its process dies, so a crashed or killed run never leaks a slot, and the launcher needs no
coordination of its own (joblib, basic, ray, or several sweeps sharing one node all work).

The device reaches the run through `CUDA_VISIBLE_DEVICES`, set in the job's process before
CUDA starts: Lightning's `devices: 1` then means "this slot's GPU", so `trainer.devices` and
with it the config hash stay the same whatever GPU a run lands on (`placement` itself is a
non-identity key). CUDA reads that variable once per process, so a reused worker stays pinned
to its first device and only ever takes slots there. Host CPU threads are split between the
devices × k concurrent runs (`threads`, also non-identity).

With no GPU (devices resolve to 0) placement does nothing.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("dkbench.placement")

R = TypeVar("R")


@dataclass(frozen=True)
class Plan:
    """What the `placement` config resolves to on this host."""

    device_ids: tuple[str, ...]  # as CUDA_VISIBLE_DEVICES names them (index or UUID)
    runs_per_device: int
    host_threads: int
    lock_dir: Path

    @property
    def slots(self) -> int:
        return len(self.device_ids) * self.runs_per_device

    @property
    def threads_per_run(self) -> int:
        return threads_per_run(self.host_threads, self.slots)


@dataclass(frozen=True)
class Slot:
    device: int  # position in Plan.device_ids
    index: int  # j in 0..k-1
    device_id: str


# --- pure assignment logic ----------------------------------------------------------------------

def resolve_devices(devices: Any, visible: Sequence[str]) -> list[str]:
    """The device ids to spread runs over: `auto` = every visible one; an int n = the first n;
    a list = those positions among the visible devices.

    With no visible GPU an explicit count still yields ids 0..n-1: a CPU rehearsal of the
    slot logic, harmless because a CPU run never reads CUDA_VISIBLE_DEVICES.
    """
    if devices is None or devices == "auto":
        return list(visible)
    if isinstance(devices, bool):  # bool is an int to Python; `true` here is a config mistake
        raise ValueError(f"placement.devices must be auto, a count or a list of indices, not {devices!r}")
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        n = int(devices)
        if visible and n > len(visible):
            raise ValueError(f"placement.devices={n} but only {len(visible)} GPU(s) are visible: {list(visible)}")
        return list(visible[:n]) if visible else [str(i) for i in range(n)]
    indices = [int(i) for i in devices]
    if visible:
        bad = [i for i in indices if not 0 <= i < len(visible)]
        if bad:
            raise ValueError(f"placement.devices has indices {bad} outside the {len(visible)} visible GPU(s)")
        return [visible[i] for i in indices]
    return [str(i) for i in indices]


def threads_per_run(host_threads: int, concurrent_runs: int) -> int:
    return max(1, int(host_threads) // max(1, int(concurrent_runs)))


def choose_slot(free: set[tuple[int, int]], pinned: int | None = None) -> tuple[int, int] | None:
    """Among free (device, j) slots: on the pinned device if any, else on the device with the
    most free slots (the least loaded, lowest index on ties), so runs spread over devices."""
    if pinned is not None:
        free = {s for s in free if s[0] == pinned}
    if not free:
        return None
    per_device: dict[int, int] = {}
    for d, _ in free:
        per_device[d] = per_device.get(d, 0) + 1
    device = min(per_device, key=lambda d: (-per_device[d], d))
    return device, min(j for d, j in free if d == device)


# --- the slot locks -----------------------------------------------------------------------------

def lock_folder(lock_dir: str | Path) -> Path:
    """Slots are per machine (and per SLURM job, whose GPUs SLURM already keeps apart and may
    renumber from 0): one folder per host, so a runs_dir shared over NFS never mixes nodes."""
    name = socket.gethostname()
    if os.environ.get("SLURM_JOB_ID"):
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return Path(lock_dir) / name


def slot_path(folder: Path, device_id: str, index: int) -> Path:
    return folder / f"slot-{re.sub(r'[^A-Za-z0-9_.-]', '_', device_id)}-{index}.lock"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


_held_fds: set[int] = set()


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker, say) shares the lock's open file description, and
    # flock stays taken until every copy is closed: a child outliving the job would keep the
    # slot. Closing the child's copies (without unlocking) leaves the parent's lock alone.
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class HeldSlot:
    """A slot this process holds; `release()` (or the process's death) frees it."""

    def __init__(self, slot: Slot, fd: int, path: Path):
        self.slot, self._fd, self.path = slot, fd, path
        _held_fds.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            _held_fds.discard(self._fd)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def acquire(plan: Plan, pinned: int | None = None, poll_s: float = 0.05, max_poll_s: float = 2.0,
            timeout_s: float | None = None) -> HeldSlot:
    """Take a free slot (only on device `pinned` when given), waiting with backoff if none is.

    Every free slot is locked briefly to see the load per device, then all but the chosen one
    are released: flock makes the choice exclusive, the count only guides spreading.
    """
    folder = lock_folder(plan.lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    devices = [pinned] if pinned is not None else range(len(plan.device_ids))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wait = poll_s
    while True:
        taken: dict[tuple[int, int], tuple[int, Path]] = {}
        for d in devices:
            for j in range(plan.runs_per_device):
                path = slot_path(folder, plan.device_ids[d], j)
                fd = _try_lock(path)
                if fd is not None:
                    taken[(d, j)] = (fd, path)
        choice = choose_slot(set(taken), pinned)
        for key, (fd, _) in taken.items():
            if key != choice:
                os.close(fd)
        if choice is not None:
            fd, path = taken[choice]
            return HeldSlot(Slot(choice[0], choice[1], plan.device_ids[choice[0]]), fd, path)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free placement slot in {folder} after {timeout_s} s")
        time.sleep(wait)
        wait = min(wait * 2, max_poll_s)


# --- the config side ----------------------------------------------------------------------------

_visible: list[str] | None = None  # this process's GPUs before placement narrowed them
_pinned_id: str | None = None  # the device id this process's CUDA_VISIBLE_DEVICES was set to


def visible_devices() -> list[str]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them; read once,
    before this module narrows the variable to one device. `torch.cuda.device_count()` asks
    NVML before CUDA starts, so counting here does not pin the process yet."""
    global _visible
    if _visible is None:
        import torch

        n = torch.cuda.device_count()
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        listed = [x.strip() for x in env.split(",") if x.strip()] if env is not None else []
        _visible = listed[:n] if env is not None else [str(i) for i in range(n)]
    return list(_visible)


def host_threads_available() -> int:
    """CPU threads this process may run on (its affinity mask: a SLURM or taskset share, not
    the whole machine's `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_from_config(placement: Any, visible: Sequence[str] | None = None) -> Plan | None:
    """The placement of a `placement` node, or None when it does nothing (no GPU, no node)."""
    if not placement:
        return None
    node = OmegaConf.to_container(placement, resolve=True) if OmegaConf.is_config(placement) else dict(placement)
    ids = resolve_devices(node.get("devices", "auto"), visible_devices() if visible is None else visible)
    if not ids:
        return None
    k = int(node.get("runs_per_device") or 1)
    if k < 1:
        raise ValueError(f"placement.runs_per_device must be ≥ 1, not {k}")
    host = node.get("host_threads", "auto")
    return Plan(
        device_ids=tuple(ids), runs_per_device=k,
        host_threads=host_threads_available() if host in (None, "auto") else int(host),
        lock_dir=Path(node.get("lock_dir") or Path.cwd() / ".placement"),
    )


def slot_count(devices: Any, runs_per_device: Any) -> int:
    """Concurrent jobs for a packing launcher: devices × k, or k when there is no GPU (the
    launcher still runs k at once; placement itself is then off)."""
    return max(1, len(resolve_devices(devices, visible_devices()))) * max(1, int(runs_per_device))


def pin_process(plan: Plan, slot: Slot) -> None:
    """Point this process's CUDA at the slot's device, once, before CUDA starts."""
    global _pinned_id
    if _pinned_id is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.device_id
        _pinned_id = slot.device_id


def pinned_device(plan: Plan) -> int | None:
    """The only device this process may take slots on, or None while it is free to choose.

    Pinned once it set CUDA_VISIBLE_DEVICES (CUDA may have read it since); a process whose CUDA
    started before placement runs on the first visible device, whatever we set now.
    """
    current = _pinned_id
    if current is None:
        import torch

        if not torch.cuda.is_initialized():
            return None
        visible = visible_devices()
        current = visible[0] if visible else None
        log.warning("CUDA started before placement: this process stays on device %s", current)
    if current not in plan.device_ids:
        raise RuntimeError(f"this process is pinned to GPU {current}, outside placement.devices {plan.device_ids}")
    return plan.device_ids.index(current)


def placed_config(cfg: DictConfig, plan: Plan, slot: Slot) -> DictConfig:
    """A copy of the job's config with the run's CPU threads and a record of its slot (both
    outside the config hash; the record lands in the run's config.yaml)."""
    out = copy.deepcopy(cfg)
    with read_write(out), open_dict(out):
        if out.get("threads") is None:  # an explicit `threads=` wins
            out.threads = plan.threads_per_run
        out.placement.assigned = {
            "device": slot.device_id, "slot": slot.index, "slots": plan.slots,
            "threads": int(out.threads), "host": socket.gethostname(),
        }
    return out


@contextmanager
def placement_slot(cfg: DictConfig) -> Iterator[DictConfig]:
    """Hold a slot for the duration of one job; yields the config to run it with."""
    plan = plan_from_config(cfg.get("placement"))
    trainer_devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if plan is not None and str(trainer_devices) not in ("1", "auto"):
        # a run that names its GPUs or spans several (DDP) owns them: narrowing its process to
        # one slot's device would break it, so placement stands aside
        log.info("placement off: trainer.devices=%s chooses the devices itself", trainer_devices)
        plan = None
    if plan is None:
        yield cfg
        return
    began = time.monotonic()
    held = acquire(plan, pinned=pinned_device(plan))
    try:
        pin_process(plan, held.slot)
        log.info("placement: device %s slot %d of %d (waited %.1f s)", held.slot.device_id, held.slot.index,
                 plan.runs_per_device, time.monotonic() - began)
        yield placed_config(cfg, plan, held.slot)
    finally:
        held.release()


def placed(task: Callable[..., R]) -> Callable[..., R]:
    """Decorator for a sweep job's task function `task(cfg)`: runs it inside a slot."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig, *args: Any, **kwargs: Any) -> R:
        with placement_slot(cfg) as job_cfg:
            return task(job_cfg, *args, **kwargs)

    return wrapper
