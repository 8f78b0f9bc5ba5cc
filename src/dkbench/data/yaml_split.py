"""Splits declared in a dataset YAML, for the generic readers (`npz`, `folder`), and the few
rules both readers share (paths under the data root, `provides`, label-derived columns).

A YAML that brings data without a split says how to make one::

    split: {ratios: [0.7, 0.15, 0.15], stratify: true, group_by: patient_id, seed: 0}

`make_or_load_split` computes it deterministically (`assign_splits`: whole groups, stratified
by label as far as the groups allow), keys it by a hash of the sample ids, their labels and
groups and the settings (`split_key`), and saves it once as JSON; later runs load the file, so
a split never changes under a finished run even if this code's rule were to change.

Where the JSON goes: a reader is called as `reader(data_dir, spec, **options)` and sees no
runs folder, and a `${paths.cache_dir}` interpolated into `dataset.options` would make the
machine's absolute path part of every run's config hash (`runner/run_folder.identity_config`
drops `paths`, not `dataset`). So the file is written next to the data
(`<folder of the data file>/.dkbench_splits/<dataset>-<key>.json`); `split.save_dir` moves it
(e.g. when the data folder is read-only; that path then enters the config hash). When the
folder cannot be written the split is still computed (it is deterministic) and a warning says
it was not saved. Either way the run's metadata.json records `split_hash` under data.notes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.spec import SPLITS, DatasetSpec
from dkbench.errors import InvalidDataError, RunConfigError

SPLIT_FOLDER = ".dkbench_splits"
METHOD = "yaml ratios: whole groups assigned in a seeded order to the split furthest below its share, per label"


@dataclass(frozen=True)
class SplitSettings:
    """The YAML's `split:` mapping. `save_dir` says only where the JSON goes: not in the key."""

    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    stratify: bool = True
    group_by: str | None = None
    seed: int = 0
    save_dir: str | None = None

    @classmethod
    def from_options(cls, raw: Mapping[str, Any] | None, where: str) -> SplitSettings:
        """Typed settings from `dataset.options.split`; one-line refusals naming the field."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise RunConfigError(f"{where}: unknown split setting(s) {unknown}; valid: "
                                 f"{sorted(cls.__dataclass_fields__)}")
        ratios = tuple(raw.get("ratios", cls.ratios))
        if len(ratios) != 3 or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0
                                       for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
            raise RunConfigError(f"{where}: split.ratios={list(ratios)}; give three positive shares "
                                 "(train, val, test) that sum to 1, e.g. [0.7, 0.15, 0.15]")
        stratify, seed = raw.get("stratify", cls.stratify), raw.get("seed", cls.seed)
        if not isinstance(stratify, bool):
            raise RunConfigError(f"{where}: split.stratify must be true or false, got {stratify!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RunConfigError(f"{where}: split.seed must be an integer, got {seed!r}")
        group_by, save_dir = raw.get("group_by"), raw.get("save_dir")
        return cls(ratios=tuple(float(r) for r in ratios), stratify=stratify,  # type: ignore[arg-type]
                   group_by=None if group_by is None else str(group_by), seed=seed,
                   save_dir=None if save_dir is None else str(save_dir))

    def identity(self) -> dict[str, Any]:
        """What the split depends on (everything but where it is saved)."""
        out = asdict(self)
        out.pop("save_dir")
        out["ratios"] = list(self.ratios)
        return out


@dataclass(frozen=True)
class Split:
    """Index arrays (ascending: data order) per split, and what metadata.json should say."""

    indices: dict[str, np.ndarray]
    notes: dict[str, Any]


# --- computing a split --------------------------------------------------------------------
def split_key(ids: Sequence[str], strata: np.ndarray | None, groups: Sequence[str], settings: SplitSettings) -> str:
    """SHA-256 over the sample ids (in order), their labels, their groups and the settings."""
    payload = {
        "ids": [str(i) for i in ids],
        "labels": None if strata is None else np.asarray(strata).tolist(),
        "groups": [str(g) for g in groups],
        "settings": settings.identity(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def assign_splits(strata: np.ndarray | None, groups: Sequence[str], settings: SplitSettings) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per row.

    Groups are shuffled with `settings.seed`; within each stratum (a group's most common label,
    or one stratum without stratification) the largest groups go first, each to the split whose
    row count is furthest below its share *relative to that share*. The relative deficit hands
    the first three groups of a stratum to train, val and test, so small datasets still get every
    class in every split; large ones converge to the ratios."""
    group_names, group_of_row = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    sizes = np.bincount(group_of_row, minlength=len(group_names))
    stratum = _group_strata(strata, group_of_row, len(group_names)) if settings.stratify else None
    order = np.random.default_rng(settings.seed).permutation(len(group_names))
    share = np.asarray(settings.ratios, dtype=float)
    split_of_group = np.empty(len(group_names), dtype=np.int64)
    for s in np.unique(stratum) if stratum is not None else (None,):
        members = order if s is None else order[stratum[order] == s]
        members = members[np.argsort(-sizes[members], kind="stable")]  # largest first, seeded ties
        target, count = share * sizes[members].sum(), np.zeros(3)
        for g in members:
            k = int(np.argmax((target - count) / target))
            split_of_group[g] = k
            count[k] += sizes[g]
    return split_of_group[group_of_row]


def _group_strata(strata: np.ndarray | None, group_of_row: np.ndarray, n_groups: int) -> np.ndarray | None:
    """Each group's most common label (ties: the smaller label); None when there are no labels."""
    if strata is None:
        return None
    labels = np.asarray(strata, dtype=np.int64)
    counts = np.zeros((n_groups, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (group_of_row, labels), 1)
    return counts.argmax(axis=1)


def make_or_load_split(*, dataset: str, ids: Sequence[str], strata: np.ndarray | None, groups: Sequence[str] | None,
                       settings: SplitSettings, default_dir: Path, data_dir: Path) -> Split:
    """The split of `ids` as `settings` say: loaded from its JSON when saved before, else computed
    and saved (see the module docstring for where). `groups` None: every sample is its own group."""
    ids = [str(i) for i in ids]
    groups = list(ids) if groups is None else [str(g) for g in groups]
    key = split_key(ids, strata, groups, settings)
    folder = resolve_path(data_dir, settings.save_dir) if settings.save_dir else default_dir
    path = folder / f"{dataset}-{key[:16]}.json"
    warnings: list[str] = []
    if path.is_file():
        indices = _indices_from_doc(json.loads(path.read_text()), ids, path)
    else:
        assigned = assign_splits(strata, groups, settings)
        indices = {name: np.flatnonzero(assigned == k) for k, name in enumerate(SPLITS)}
        doc = {"dataset": dataset, "split_hash": key, "method": METHOD, "settings": settings.identity(),
               "groups": len(set(groups)), **{name: [ids[i] for i in idx] for name, idx in indices.items()}}
        if not _write_atomically(path, json.dumps(doc, indent=1)):
            warnings.append(f"split not saved: {folder} is not writable; it is recomputed identically each run. "
                            "Set dataset.options.split.save_dir to a writable folder to keep a copy")
            path = None  # type: ignore[assignment]
    notes = {"split_method": METHOD, "split_hash": key, "split_file": str(path) if path else None,
             "split_settings": settings.identity(), "split_groups": len(set(groups)),
             "split_stratified_by_label": settings.stratify and strata is not None,
             "split_ids_sha256": ids_digest(indices, ids), "warnings": warnings}
    return Split(indices=indices, notes=notes)


def _indices_from_doc(doc: Mapping[str, Any], ids: list[str], path: Path) -> dict[str, np.ndarray]:
    """A saved split's id lists → index arrays; refused when they are not exactly `ids`."""
    position = {sid: i for i, sid in enumerate(ids)}
    listed = [sid for name in SPLITS for sid in doc.get(name, [])]
    if sorted(listed) != sorted(ids):
        raise InvalidDataError(f"saved split {path} does not list this data's sample ids; it was edited or belongs "
                               "to other data: delete it and the split is recomputed")
    return {name: np.sort(np.array([position[s] for s in doc[name]], dtype=np.int64)) for name in SPLITS}


def _write_atomically(path: Path, text: str) -> bool:
    """Write via a temporary file and rename (parallel runs write the same bytes); False when
    the folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def split_from_column(values: Sequence[str], ids: Sequence[str], source: str) -> Split:
    """Index arrays from per-sample split names (a CSV column, an npz key): train / val / test."""
    names = np.asarray([str(v).strip().lower() for v in values])
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise InvalidDataError(f"{source} holds split names {unknown[:5]}; each sample must say one of "
                               f"{list(SPLITS)}: fix those cells")
    indices = {name: np.flatnonzero(names == name) for name in SPLITS}
    digest = ids_digest(indices, [str(i) for i in ids])
    notes = {"split_method": f"given by the data ({source})", "split_hash": digest, "split_file": None,
             "split_ids_sha256": digest, "warnings": []}
    return Split(indices=indices, notes=notes)


def ids_digest(indices: Mapping[str, np.ndarray], ids: Sequence[str]) -> str:
    """SHA-256 of the split itself: its three id lists."""
    doc = {name: [ids[i] for i in indices[name]] for name in SPLITS}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --- what both generic readers share ------------------------------------------------------
def resolve_path(data_dir: Path, value: str | os.PathLike) -> Path:
    """A configured path: absolute as given, else relative to the data root (`paths.data_dir`)."""
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else Path(data_dir) / path


def configured_spec(spec: DatasetSpec, configured: set[str]) -> tuple[DatasetSpec, list[str]]:
    """The spec with `provides` = what the options configure, and warnings.

    A YAML that lists a key the options do not configure is refused (a promise no file keeps);
    a configured key the YAML does not list is added with a warning, since the pre-flight checks
    strategies against the YAML's list before the data is read."""
    where = f"dataset '{spec.name}'"
    promised = set(spec.provides) - configured
    if promised:
        raise RunConfigError(f"{where}: provides lists {sorted(promised)} but dataset.options configure no such data "
                             f"(masks → mask, bbox; metadata columns → metadata; attribute columns → attributes): "
                             "configure them or remove them from provides")
    added = sorted(configured - set(spec.provides))
    warnings = [f"{where}: the options configure {added} but provides does not list them; add them to provides "
                "so that strategies needing them pass the pre-flight"] if added else []
    return replace(spec, provides=frozenset(configured)), warnings


def refuse_label_derived(spec: DatasetSpec, used: Mapping[str, Sequence[str]]) -> None:
    """A column (or key) the YAML lists under `label_derived` may not be read as model data."""
    for role, names in used.items():
        leaked = sorted(set(names) & set(spec.label_derived))
        if leaked:
            raise RunConfigError(f"dataset '{spec.name}': {leaked} listed under label_derived (derived from the label) "
                                 f"cannot be {role}: remove them from dataset.options or from label_derived")
