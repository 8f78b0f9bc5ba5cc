"""The dataset axis: name → reader function.

A reader is `reader(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays`. The
spec comes from the dataset's YAML (task, classes, channels, size, provides); the options are
the YAML's `options:` mapping. The DataModule checks what the reader returned against the
spec, so a YAML that promises something its reader does not deliver fails loudly.
"""

from __future__ import annotations

from dkbench.errors import UserError
from dkbench.registry import Registry

DATASETS: Registry = Registry("dataset", package="dkbench.data.readers")
register_dataset = DATASETS.register


class MissingDataError(UserError, FileNotFoundError):
    """A dataset file is absent; the message says which file, which setting, how to get it."""


def missing_file_message(path, *, what: str, how: str) -> str:
    return (
        f"{what} not found at {path}.\n"
        f"  The data root comes from `paths.data_dir` (env DKBENCH_DATA); set it to the folder "
        f"that holds the dataset, e.g. `DKBENCH_DATA=/path/to/datasets dkbench train ...` or "
        f"`paths.data_dir=/path/to/datasets`.\n  To obtain it: {how}"
    )
