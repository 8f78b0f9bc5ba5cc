"""The one marker for bad input a user can fix (a setting, a name, a file, an incompatible pair).

Errors that subclass `UserError` are printed by the command line as their message alone, with no
traceback (set ``DKBENCH_TRACEBACK=1`` to see it), and exit with status 2. Their messages name the
problem, the setting or file, and the fix. Everything else is a bug or an environment failure and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Mixed into the project's input errors (`class SpeedConfigError(UserError, ValueError)`)."""


class RunConfigError(UserError, ValueError):
    """A run setting that cannot work (checked before data, models or folders are touched)."""


class IncompatibleInputError(UserError, ValueError):
    """The input size / channels do not fit a backbone; the message says what to change. (Here, not
    beside the backbones, so the pre-flight raises it without importing PyTorch.)"""


class InvalidDataError(UserError, ValueError):
    """A data file whose content cannot be trained on as it is (dtype, range, labels, split sizes);
    the message names the dataset, the split (or file) and what to convert."""


class RunInterrupted(Exception):
    """SIGTERM or SIGINT (Ctrl-C) arrived during a run (`dkbench.runner.signals`). Not a failure:
    the run's status says `interrupted`, its last.ckpt is kept, and rerunning the same command
    resumes it. The command line exits with 128 + the signal number, as a shell would."""

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}; rerun the same command to resume "
                         "(finished runs are skipped, an interrupted one resumes from its last checkpoint)")
