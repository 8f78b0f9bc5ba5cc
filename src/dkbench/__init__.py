"""dkbench: a config-driven benchmark of domain-knowledge integration for medical image analysis."""

import time as _time

#: When dkbench was first imported in this process (≈ process start for the CLI and workers):
#: the runner reports the overhead from here to the first training step.
IMPORTED_AT = _time.time()

__version__ = "0.1.0"
