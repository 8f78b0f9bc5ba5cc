"""The run folder: the unit of results and of resumption (nnU-Net style discipline).

`runs/<suite>/<dataset>/<backbone>__<strategy>/seed_<k>/` holds `config.yaml`,
`metadata.json`, `metrics.json`, `predictions.csv` and finally `DONE` (which stores the config
hash). Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file behind; `DONE` is written last, so its presence means the rest is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Config sections that do not change results (where files go, how they are logged).
NON_IDENTITY_KEYS = ("paths", "logger", "hydra", "extras", "ui")
RESULT_FILES = ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE")


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {k: v for k, v in container.items() if k not in NON_IDENTITY_KEYS}


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits over the resolved config minus paths/logging: same hash ⇔ same experiment."""
    payload = json.dumps(identity_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done_hash(self) -> str | None:
        """The config hash of a completed run, or None if the run is not complete."""
        done = self.file("DONE")
        if not done.exists():
            return None
        try:
            record = json.loads(done.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # corrupt marker → treated as not done
        if not all(self.file(n).exists() for n in RESULT_FILES):
            return None
        return record.get("config_hash")

    def is_done(self, cfg_hash: str) -> bool:
        return self.done_hash == cfg_hash

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.file(name), text)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def mark_done(self, cfg_hash: str, status: str = "done") -> None:
        self.write_json("DONE", {"config_hash": cfg_hash, "status": status})

    def supersede(self, old_hash: str) -> Path:
        """Move the results of an older config aside (never overwrite them)."""
        dest = self.path / "superseded" / old_hash
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*RESULT_FILES, "checkpoints", "csv", "wandb"):
            src = self.file(name)
            if src.exists():
                shutil.move(str(src), str(dest / name))
        return dest

    def clear_stale(self, cfg_hash: str) -> None:
        """Remove partial results of an earlier config (checkpoints of another hash)."""
        stamp = self.file("checkpoints") / "CONFIG_HASH"
        if stamp.exists() and stamp.read_text().strip() != cfg_hash:
            shutil.rmtree(self.file("checkpoints"))
