"""The run folder: the unit of results and of resumption (nnU-Net style discipline).

`runs/<suite>[<variant>]/<dataset>/<backbone>__<strategy>[<tag>]/seed_<k>/` holds `config.yaml`,
`metadata.json`, `metrics.json`, `predictions.csv` and finally `DONE` (which stores the config
hash). Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file behind; `DONE` is written last, so its presence means the rest is complete.

The folder name is the experiment: settings given on the command line that change the result
(`dataset.resize=32`, `strategy.options.weight=2`, `trainer.max_epochs=3`) add a *variant* suffix
(`variant_suffix`) to the suite folder (`adhoc@dataset.resize:32`, `smoke@trainer.max_epochs:2`), so
a run at another resolution or option gets its own folder instead of superseding the default one,
and a report of those settings is the report of that folder. A suite's own settings need no
suffix: the suite's name stands for them.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dkbench.storage import atomic_file, atomic_write_text, fsync_dir  # noqa: F401  (re-exported: run folders write through them)

#: Config sections that do not change results (where files go, how they are logged).
NON_IDENTITY_KEYS = ("paths", "logger", "hydra", "extras", "ui", "suite", "suite_name", "keep_checkpoints", "threads",
                    "placement", "prestage_only", "search", "protocol", "tuning",
                    "checkpoint",  # how often last.ckpt is saved; `speed` stays in: see runner/speed.py
                    "variant")  # names the folder from settings that are themselves in the hash
RESULT_FILES = ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE")
#: `status.json` holds one of these (plus `config_hash`, and `reason` / `error` where relevant).
STATUSES = ("running", "done", "failed", "incompatible", "interrupted")


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus what does not change results (resolved key by key: the
    `hydra` node of a sweep config cannot be resolved outside its job)."""
    identity = {}
    for key in cfg:
        if key in NON_IDENTITY_KEYS:
            continue
        value = cfg[key]
        identity[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if isinstance(identity.get("strategy"), dict):
        # a search space says how a value would be chosen (runner/tuning.py); the value is in `options`
        identity["strategy"].pop("search", None)
    return identity


#: top-level keys of an override that choose *which* run it is (already parts of the folder name)
#: rather than a setting of it; a config group chosen by name (`model=...`) is one too
_NAMING_KEYS = ("seed", "tag", "variant", "suite_name", "dataset.name", "backbone.name", "strategy.name")
_READABLE_VALUE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_READABLE = 60


def variant_settings(overrides: Sequence[str], groups: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(key, value) of the command-line overrides that change a run's result, sorted by key.

    Left out: flags (`-m`), Hydra's settings, what names the run already (a group chosen by name
    such as `dataset=ph2`, `seed=`, `tag=`), and what does not change results (`NON_IDENTITY_KEYS`:
    paths, logging, the suite, threads, ...). A malformed override is left to the config check."""
    settings = {}
    for override in overrides:
        if override.startswith("-"):
            continue
        key, sep, value = override.lstrip("+").partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("~")
        if not (sep or deleted) or not key:
            continue
        top = re.split(r"[./]", key, maxsplit=1)[0]
        if top in NON_IDENTITY_KEYS or key in _NAMING_KEYS or "/" in key or ("." not in key and key in groups):
            continue
        settings[key] = "~" if deleted else value
    return sorted(settings.items())


def variant_suffix(overrides: Sequence[str], groups: Sequence[str] = ()) -> str:
    """'' or the folder-name suffix of `variant_settings`: `@dataset.resize:32` (`+` joins several)
    while short and plain; else the keys' last parts plus a hash of the full settings
    (`@n_train:64+max_epochs:1+h3fa9c1`, the hash tells `backbone.size` from `dataset.size`); else
    `@v` + 8 hex digits. `config.yaml` holds the settings themselves."""
    settings = variant_settings(overrides, groups)
    if not settings:
        return ""
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    if all(_READABLE_VALUE.fullmatch(v) and ".." not in v for _, v in settings):
        full = "+".join(f"{key}:{value}" for key, value in settings)
        if len(full) <= _MAX_READABLE:
            return "@" + full
        short = "+".join(f"{key.rsplit('.', 1)[-1]}:{value}" for key, value in settings) + f"+h{digest[:6]}"
        if len(short) <= _MAX_READABLE:
            return "@" + short
    return "@v" + digest[:8]


def adopt_unsuffixed(cfg: DictConfig, cfg_hash: str) -> bool:
    """Move a finished run made before variant suffixes existed (same config hash, in the suite
    folder without the suffix) into the suffixed one, so it is found instead of recomputed."""
    variant, suite = str(cfg.get("variant") or ""), str(cfg.suite_name)
    new, runs_dir = Path(cfg.paths.run_dir), Path(cfg.paths.runs_dir)
    if not variant or not suite.endswith(variant) or new.exists():
        return False
    try:
        old = runs_dir / suite[: -len(variant)] / new.relative_to(runs_dir / suite)
    except ValueError:  # run_dir moved elsewhere by the user: nothing to adopt
        return False
    if not RunFolder(old).is_done(cfg_hash):
        return False
    new.parent.mkdir(parents=True, exist_ok=True)
    os.rename(old, new)  # one directory entry moves: atomic, nothing copied
    fsync_dir(new.parent)
    return True


def external_folder(run_dir: str | Path, other: str) -> Path:
    """Where a run's result on another dataset lives (`dkbench evaluate`, a suite's `external:`)."""
    return Path(run_dir) / "external" / other


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits over the resolved config minus paths/logging: same hash ⇔ same experiment."""
    payload = json.dumps(identity_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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
        if not self._results_parse():
            return None  # a DONE over a corrupt result is not done: the run is redone, not trusted
        return record.get("config_hash")

    def _results_parse(self) -> bool:
        """metrics.json is a JSON object and config.yaml a YAML mapping (what reports and resumes read)."""
        import yaml

        try:
            metrics = json.loads(self.file("metrics.json").read_text())
            config = yaml.safe_load(self.file("config.yaml").read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return False
        return isinstance(metrics, dict) and isinstance(config, dict)

    def is_done(self, cfg_hash: str) -> bool:
        return self.done_hash == cfg_hash

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.file(name), text)

    def write_npz(self, name: str, arrays: dict[str, Any]) -> None:
        """Compressed numpy arrays (e.g. predicted masks), written atomically like the rest."""
        import numpy as np

        with atomic_file(self.file(name), "wb") as fh:
            np.savez_compressed(fh, **arrays)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def finished_config(self, command: str) -> DictConfig:
        """The saved, resolved config of a finished run (plain YAML: nothing in it is executed);
        a folder that is not a finished run is refused in one line naming `command`."""
        from dkbench.errors import RunConfigError

        if self.done_hash is None:
            raise RunConfigError(f"{self.path} is not a finished run (no DONE with readable results); {command} a "
                                 "run folder that `dkbench train` or `sweep` completed")
        return OmegaConf.load(self.file("config.yaml"))

    def mark_done(self, cfg_hash: str) -> None:
        self.write_json("DONE", {"config_hash": cfg_hash, "status": "done"})
        self.set_status("done", cfg_hash)

    def set_status(self, status: str, cfg_hash: str, **details: Any) -> None:
        """`status.json`: what the leaderboard shows for this cell (done/failed/incompatible/running)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        self.write_json("status.json", {"status": status, "config_hash": cfg_hash, "updated": time.time(), **details})

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.file("status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def supersede(self, old_hash: str) -> Path:
        """Move the results of an older config aside (never overwrite them)."""
        dest = self.path / "superseded" / old_hash
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*RESULT_FILES, "status.json", "checkpoints", "checkpoints.hash", "csv", "wandb"):
            src = self.file(name)
            if src.exists():
                shutil.move(str(src), str(dest / name))
        return dest

    def clear_stale(self, cfg_hash: str) -> None:
        """Remove partial results of an earlier config (checkpoints of another hash)."""
        stamp = self.file("checkpoints.hash")
        if stamp.exists() and stamp.read_text().strip() != cfg_hash:
            shutil.rmtree(self.file("checkpoints"), ignore_errors=True)
        stamp.write_text(cfg_hash)


class RunLockedError(RuntimeError):
    """Another process is running the same cell right now."""


@contextmanager
def locked(run: RunFolder, wait: bool = False) -> Iterator[None]:
    """Exclusive lock on a run folder for the duration of a run.

    `flock` is released by the kernel when the holder dies (even by SIGKILL), so a crash
    leaves no stale lock; a second sweep that reaches the same cell fails cleanly instead of
    writing into it. ``wait=True`` (pre-stage runs that several cells share) blocks until the
    holder is finished instead, woken by the kernel (no polling); the caller then finds it DONE.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    fh = open(run.file(".lock"), "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunLockedError(
            f"{run.path} is being run by another process ({holder}); wait for it to finish, "
            "then run again (finished cells are skipped)"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
