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


class InvalidDataError(UserError, ValueError):
    """A data file whose content cannot be trained on as it is (dtype, range, labels, split sizes);
    the message names the dataset, the split (or file) and what to convert."""
