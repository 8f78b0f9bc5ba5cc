"""Radiomics vectors of a whole dataset, computed once and reused by every later run.

The key is a SHA-256 over the dataset name, the reader's checksum, a digest of the arrays
themselves (ids, images and, when used, masks of every split) and the feature config, so a
second strategy, seed or backbone on the same data loads the file instead of recomputing,
and any change to the data or to a feature definition misses the cache. The file is
``<cache_dir>/features/<key>.npz``; an exclusive `flock` on ``<key>.lock`` makes concurrent
runs (parallel sweep cells) wait for the first one, and the file is written to a temporary
name and renamed, so a reader never sees half a file.

`extraction_count()` is the number of dataset extractions this process has performed (cache
misses): a sweep's test counts it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dkbench.data.spec import SPLITS, DatasetArrays
from dkbench.features.radiomics import RadiomicsConfig, extract_features, feature_names
from dkbench.storage import arrays_digest, atomic_file, content_key, file_lock

log = logging.getLogger("dkbench.features")

_EXTRACTIONS = 0


def extraction_count() -> int:
    """Dataset extractions (cache misses) performed by this process so far."""
    return _EXTRACTIONS


@dataclass
class CachedFeatures:
    splits: dict[str, np.ndarray]  # split → (N, F) float32, raw (not standardised)
    names: list[str]
    key: str
    path: Path
    computed: bool  # True: extracted by this call; False: loaded from the cache
    seconds: float  # extraction time when it was computed (stored in the file)

    @property
    def dim(self) -> int:
        return len(self.names)


def cache_key(arrays: DatasetArrays, cfg: RadiomicsConfig) -> str:
    return content_key(arrays.spec.name, {"data": arrays_digest(arrays, cfg.use_mask), "features": cfg.as_dict()})


def _load(path: Path, arrays: DatasetArrays, key: str) -> CachedFeatures | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            splits = {s: f[s] for s in SPLITS}
            names = [str(n) for n in f["names"]]
            seconds = float(f["seconds"])
            ids_ok = all(
                np.array_equal(f[f"ids_{s}"], np.asarray(arrays.splits[s].ids).astype(str)) for s in SPLITS
            )
    except (OSError, KeyError, ValueError) as err:
        log.warning("feature cache %s unreadable (%s): recomputing", path, err)
        return None
    if not ids_ok:
        log.warning("feature cache %s does not match the dataset's ids: recomputing", path)
        return None
    return CachedFeatures(splits, names, key, path, computed=False, seconds=seconds)


def load_or_extract(arrays: DatasetArrays, cfg: RadiomicsConfig, cache_dir: str | Path) -> CachedFeatures:
    """The (N, F) feature table of every split, from the cache or extracted (and cached)."""
    global _EXTRACTIONS
    if cfg.use_mask and "mask" not in arrays.spec.provides:
        raise ValueError(f"dataset '{arrays.spec.name}' has no masks; use_mask=True is impossible")
    key = cache_key(arrays, cfg)
    folder = Path(cache_dir) / "features"
    path = folder / f"{key}.npz"
    with file_lock(folder / f"{key}.lock"):
        if path.exists():
            cached = _load(path, arrays, key)
            if cached is not None:
                log.info("radiomics features loaded from %s", path)
                return cached
        started = time.perf_counter()
        splits = {
            s: extract_features(arrays.splits[s].image,
                                arrays.splits[s].extras["mask"] if cfg.use_mask else None, cfg)
            for s in SPLITS
        }
        seconds = time.perf_counter() - started
        _EXTRACTIONS += 1
        names = feature_names(cfg)
        with atomic_file(path, "wb") as fh:
            np.savez(
                fh, names=np.asarray(names), seconds=np.float64(seconds), config=json.dumps(cfg.as_dict()),
                **splits, **{f"ids_{s}": np.asarray(arrays.splits[s].ids).astype(str) for s in SPLITS},
            )
        n = sum(len(v) for v in splits.values())
        log.info("radiomics features: %d images x %d features in %.1f s -> %s", n, len(names), seconds, path)
        return CachedFeatures(splits, names, key, path, computed=True, seconds=seconds)
