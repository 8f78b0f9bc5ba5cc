"""SIGTERM and Ctrl-C end a run within moments, cleanly, and resumably.

Schedulers (SLURM's `scancel`, a pre-empted cloud node, `timeout`) send SIGTERM and wait a grace
period before SIGKILL. Python's default is to die on SIGTERM without unwinding (no status, no
cleanup), and Lightning turns Ctrl-C into `exit(1)` mid-fit, so the run folder said `running`
forever. Inside `raise_on_signals` both signals raise `RunInterrupted` in the main thread at the
next bytecode (a long native op finishes first): the temp files of atomic writes are removed,
Lightning tears down, the run records `interrupted`, and the last whole last.ckpt is resumed by
the next run. Lightning adds no SIGTERM handler of its own where one is already installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dkbench.errors import RunInterrupted

HANDLED = (signal.SIGTERM, signal.SIGINT)


def _raise(signum: int, frame: object) -> None:
    raise RunInterrupted(signum)


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM / SIGINT raise `RunInterrupted`; the previous handlers come back
    after it. Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for s in HANDLED:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
