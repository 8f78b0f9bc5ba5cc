"""The dataset axis: name → reader function.

A reader is `reader(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays`. The
spec comes from the dataset's YAML (task, classes, channels, size, provides); the options are
the YAML's `options:` mapping. The DataModule checks what the reader returned against the
spec, so a YAML that promises something its reader does not deliver fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dkbench.errors import UserError
from dkbench.registry import Registry

DATASETS: Registry = Registry("dataset", package="dkbench.data.readers")
register_dataset = DATASETS.register


class MissingDataError(UserError, FileNotFoundError):
    """A dataset file is absent; the message says which file, which setting, how to get it."""


def missing_file_message(path, *, what: str, how: str) -> str:
    """One line: which file, where it was looked for, the setting that moves it, how to get it."""
    return (
        f"{what} not found at {path}. The data root comes from `paths.data_dir` (env DKBENCH_DATA): set it "
        f"to the folder that holds the dataset, e.g. `DKBENCH_DATA=/path/to/datasets dkbench train ...`. "
        f"To obtain it: {how}"
    )


#: (file, what it is, how to get it) for each file a reader needs
FileNeed = tuple[Path, str, str]
_DATA_FILES: dict[str, Callable[[Path, Any, Mapping[str, Any]], list[FileNeed]]] = {}


def data_files(reader: str) -> Callable:
    """Declares the files reader `reader` needs: `needs(data_dir, spec, options) -> [(path, what,
    how)]`. `check_data_files` (run by the reader, and by the pre-flight before anything heavy is
    imported or a run folder written) refuses a missing one in one line. Readers that generate
    their data (the probe) declare nothing."""

    def decorator(needs: Callable[[Path, Any, Mapping[str, Any]], list[FileNeed]]) -> Callable:
        _DATA_FILES[reader] = needs
        return needs

    return decorator


def check_data_files(reader: str, data_dir: str | Path, spec: Any, options: Mapping[str, Any]) -> None:
    """Raise `MissingDataError` naming the first file reader `reader` needs that is absent."""
    DATASETS.get(reader)  # imports the reader's module, which declares its files
    needs = _DATA_FILES.get(reader)
    for path, what, how in needs(Path(data_dir), spec, options) if needs else ():
        if not Path(path).is_file():
            raise MissingDataError(missing_file_message(path, what=what, how=how))
