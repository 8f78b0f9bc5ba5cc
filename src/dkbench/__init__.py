"""dkbench: a config-driven benchmark of domain-knowledge integration for medical image analysis."""

import time as _time

#: When dkbench was first imported in this process (≈ process start for the CLI and workers).
IMPORTED_AT = _time.time()

__version__ = "0.1.0"

_jobs_started = 0


def mark_job_start() -> float:
    """The start of a job (one run), for the runner's overhead figures; call it once, on entering
    the job function. The first job of a process starts at the dkbench import (its imports and
    config composition are its overhead); a later job in a reused worker starts now — counting
    from the import would charge it every earlier job's time."""
    global _jobs_started
    _jobs_started += 1
    return IMPORTED_AT if _jobs_started == 1 else _time.time()
