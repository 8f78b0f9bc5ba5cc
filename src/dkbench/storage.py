"""Durable files and shared caches, one home each: atomic writes, file locks, content keys.

- `atomic_file` / `atomic_write_text`: the old file or the complete new one, never half of it
  (temporary file beside the target, fsync, rename, fsync of the folder);
- `file_lock`: an exclusive advisory lock, for caches that parallel sweep cells fill once;
- `load_cached_tensors`: a torch cache read without unpickling code, None when unreadable;
- `content_key` / `arrays_digest`: cache keys from the content that determines a cached result
  (the data's bytes and ids, the settings), so a changed input never reads a stale entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dkbench.data.spec import DatasetArrays

SPLITS = ("train", "val", "test")

#: the process umask, read once: files written through `atomic_file` get the permissions a plain
#: `open()` would give (mkstemp creates them 0600, unreadable to the other users of a shared cache)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    """Makes a rename durable (the directory entry), where the OS allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """The one home of atomic writes: yields a handle on a temporary file beside `path`; on
    success it is flushed, fsynced and renamed over `path` (then the folder is fsynced), on any
    failure (an exception, Ctrl-C, a full disk) it is removed, so `path` is either the old file
    or the complete new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def link_or_copy(source: Path, path: Path) -> None:
    """`path` becomes the same file as `source`: a hard link where the filesystem allows (no
    second copy of e.g. shared weights), else an atomic copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    try:
        os.link(source, path)
    except OSError:
        with open(source, "rb") as src, atomic_file(path, "wb") as dst:
            shutil.copyfileobj(src, dst)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if needed): the first process computes, the
    others wait and then find the finished file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_cached_tensors(path: Path) -> Any | None:
    """A cache file written with `torch.save`, read with `weights_only=True` (tensors and plain
    containers only: a planted pickle runs no code), or None when it cannot be read — truncated,
    damaged, planted, from an incompatible version — with a warning: a cache is recomputed, never
    trusted past a failed read and never a reason for a run to fail."""
    import logging

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever the damage, the answer is the same: recompute
        logging.getLogger("dkbench").warning("cache %s is unreadable (%s: %s); recomputing it", path,
                                             type(err).__name__, (str(err).splitlines() or [""])[0][:200])
        return None


def content_key(prefix: str, payload: Any, digits: int = 16) -> str:
    """`<prefix>-<sha256 of the payload as sorted JSON>`: equal payloads, equal keys. Keys name
    cache files, so the prefix (often a dataset name) is reduced to a plain file-name part: no
    separators, no `..`, whatever a config or a reader put in it."""
    text = json.dumps(payload, sort_keys=True, default=str)
    safe = re.sub(r"[^A-Za-z0-9_.+=@-]", "_", str(prefix)).replace("..", "_").lstrip(".") or "key"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:digits]}"


def arrays_digest(arrays: DatasetArrays, with_masks: bool = False) -> str:
    """sha256 over a dataset's name, checksum and size and every split's ids and image bytes
    (and masks): what a cache computed from the data depends on."""
    h = hashlib.sha256()
    h.update(f"{arrays.spec.name}|{arrays.checksum}|{arrays.spec.size}".encode())
    for split in SPLITS:
        s = arrays.splits[split]
        h.update(f"|{split}|{s.image.shape}|{s.image.dtype}|".encode())
        h.update("\x00".join(map(str, s.ids)).encode())
        h.update(np.ascontiguousarray(s.image).tobytes())
        if with_masks:
            h.update(np.ascontiguousarray(s.extras["mask"]).tobytes())
    return h.hexdigest()
