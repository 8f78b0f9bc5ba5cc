"""The tuned protocol (`dkbench sweep suite=X suite.protocol=tuned`): an equal, declared
hyperparameter search for every strategy and the baseline, selected on validation only.

It follows DomainBed's protocol (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization",
ICLR 2021): a search space declared per algorithm, the same number of random trials for every
algorithm including the baseline, the trial chosen by a validation metric, then several seeds at
the chosen setting; a test-selected "oracle" is reported only as an upper bound. Simplified: one
seed per trial (DomainBed: several), trial 0 is the default setting (so tuning can only find a
setting that validates at least as well), and only random search (trials are independent, so a
sweep runs them all in parallel and resumes any of them).

Spaces: the shared knobs (optimiser) are declared once in `configs/train.yaml` (`search:`), each
strategy's own knobs in its YAML (`strategy.search`, keys relative to `strategy.options`). Neither
enters a run's config hash: a space says how a value is chosen, the value itself is in the config.

Layout, beside the default protocol's `<runs>/<suite>/...`::

    <runs>/<suite>@tuning/<dataset>/<backbone>__<strategy>@trial<k>/seed_<trial_seed>/   N trials
    <runs>/<suite>@tuned/<dataset>/<backbone>__<strategy>/seed_<s>/                     the K seeds
    <runs>/<suite>@tuned/<dataset>/<backbone>__<strategy>/chosen.json                   the selection

Trials are ordinary run folders (resume, DONE, superseded when a sampled value changes), so a
killed tuned sweep resumes where it stopped; `chosen.json` is rewritten from them each time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.errors import RunConfigError
from dkbench.storage import atomic_write_text

#: the protocol's settings: top-level `protocol=tuned`, `tuning.trials=8`, ... (configs/train.yaml)
PROTOCOLS = ("default", "tuned")
TUNING_DEFAULTS = {"trials": 8, "trial_seed": 1000, "sampler": "random"}
TUNING_KEYS = set(TUNING_DEFAULTS)
TUNING_SUFFIX, TUNED_SUFFIX = "@tuning", "@tuned"
KINDS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class Distribution:
    """One knob's distribution: ``{log_uniform: [lo, hi]}``, ``{uniform: [lo, hi]}``,
    ``{int: [lo, hi]}`` (inclusive) or ``{choice: [a, b, ...]}``."""

    kind: str
    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        lo, hi = self.values
        if self.kind == "int":
            return int(rng.integers(lo, hi + 1))
        value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if self.kind == "log_uniform" else rng.uniform(lo, hi)
        return float(f"{value:.4g}")  # 4 significant digits: readable overrides, nothing a search resolves


def parse_distribution(name: str, spec: Any) -> Distribution:
    """A YAML distribution → `Distribution`, or one error naming the knob and the valid forms."""
    forms = "{log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]} or {choice: [a, b, ...]}"
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise RunConfigError(f"search space '{name}': {spec!r} is not a distribution; write {forms}")
    kind, values = next(iter(spec.items()))
    values = tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else ()
    if kind == "choice":
        if not values:
            raise RunConfigError(f"search space '{name}': choice needs a non-empty list")
        return Distribution(kind, values)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numeric or not values[0] < values[1]:
        raise RunConfigError(f"search space '{name}': {kind} needs [lo, hi] with lo < hi, got {spec!r}")
    if kind == "log_uniform" and values[0] <= 0:
        raise RunConfigError(f"search space '{name}': log_uniform needs lo > 0, got {values[0]}")
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise RunConfigError(f"search space '{name}': int needs integer bounds, got {spec!r}")
    return Distribution(kind, tuple(int(v) if kind == "int" else float(v) for v in values))


def search_space(cfg: Any) -> dict[str, Distribution]:
    """A composed run config's space: the shared knobs (`search`) and the strategy's own
    (`strategy.search`, prefixed with `strategy.options.`), as override path → distribution.
    A strategy key that is not one of its options is refused (a typo would tune nothing)."""
    from omegaconf import OmegaConf

    def plain(node: Any) -> dict:
        return dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node or {})

    space = {str(k): parse_distribution(str(k), v) for k, v in plain(cfg.get("search")).items()}
    options = plain(cfg.strategy.get("options"))
    for key, spec in plain(cfg.strategy.get("search")).items():
        head = str(key).split(".")[0]
        if head not in options:
            raise RunConfigError(f"strategy '{cfg.strategy.name}': search key '{key}' is not one of its options "
                                 f"({', '.join(sorted(options)) or 'none'})")
        space[f"strategy.options.{key}"] = parse_distribution(f"{cfg.strategy.name}.{key}", spec)
    return space


def trial_rng(identity: Sequence[str], trial: int) -> np.random.Generator:
    """The random stream of one trial, from (suite, dataset, backbone, strategy, trial) alone:
    the same trial samples the same values on any machine, in any order, after any crash."""
    digest = hashlib.sha256("/".join([*map(str, identity), str(trial)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_trial(space: Mapping[str, Distribution], identity: Sequence[str], trial: int) -> dict[str, Any]:
    """Trial 0 is the default setting ({}); trial k ≥ 1 draws every knob, in sorted key order."""
    if trial == 0:
        return {}
    rng = trial_rng(identity, trial)
    return {key: space[key].sample(rng) for key in sorted(space)}


def override_value(value: Any) -> str:
    """A sampled value as Hydra override syntax (floats kept exact, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if value.replace("_", "").replace("-", "").isalnum() else json.dumps(value)
    return json.dumps(value)


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    return [f"{key}={override_value(value)}" for key, value in sorted(params.items())]


def tuning_options(suite: Mapping[str, Any]) -> dict[str, Any]:
    """The `tuning:` settings (copied into the suite by the sweeper) over the defaults, checked."""
    given = dict(suite.get("tuning") or {})
    unknown = sorted(set(given) - TUNING_KEYS)
    if unknown:
        raise RunConfigError(f"unknown tuning key(s) {unknown} (valid: {', '.join(sorted(TUNING_KEYS))}), e.g. tuning.trials=8")
    options = {**TUNING_DEFAULTS, **given}
    if not isinstance(options["trials"], int) or options["trials"] < 1:
        raise RunConfigError(f"tuning.trials must be a whole number ≥ 1, got {options['trials']!r}")
    if options["sampler"] != "random":
        raise RunConfigError(f"tuning.sampler '{options['sampler']}' is not available (valid: random)")
    if int(options["trial_seed"]) in {int(s) for s in suite.get("seeds") or []}:
        raise RunConfigError(f"tuning.trial_seed={options['trial_seed']} is one of the evaluation seeds "
                             f"{list(suite.get('seeds'))}: the chosen trial's run would be reported as a result")
    return options


def protocol(suite: Mapping[str, Any]) -> str:
    value = str(suite.get("protocol") or "default")
    if value not in PROTOCOLS:
        raise RunConfigError(f"protocol={value} is not a protocol (valid: {', '.join(PROTOCOLS)})")
    return value


def validation_metric(suite: Mapping[str, Any], monitor: str) -> str:
    """The metric trials are chosen by: the validation twin of the suite's rank metric
    (test/auroc → val/auroc), else the run's own checkpoint monitor."""
    rank = str(suite.get("rank_metric") or "")
    return "val/" + rank.split("/", 1)[1] if rank.startswith("test/") else monitor


@dataclass(frozen=True)
class TrialResult:
    trial: int
    params: dict[str, Any]
    validation: dict[str, float]  # only val/* metrics: a selection cannot see test numbers
    config_hash: str
    run_dir: str = ""


def validation_only(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k.startswith("val/") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def select_trial(trials: Sequence[TrialResult], metric: str, mode: str) -> TrialResult:
    """The trial with the best validation `metric` (ties: the lower trial number, i.e. the
    default first). Refuses anything but a `val/` metric: choices are made on validation only."""
    if not metric.startswith("val/"):
        raise RunConfigError(f"trials are selected on validation metrics only, not '{metric}'")
    if mode not in ("max", "min"):
        raise RunConfigError(f"selection mode must be max or min, got '{mode}'")
    scored = [t for t in trials if math.isfinite(t.validation.get(metric, math.nan))]
    if not scored:
        raise ValueError(f"no trial has a finite '{metric}'")
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda t: (sign * t.validation[metric], t.trial))


def chosen_path(runs_dir: str | Path, suite_name: str, dataset: str, backbone: str, strategy: str) -> Path:
    return Path(runs_dir) / f"{suite_name}{TUNED_SUFFIX}" / dataset / f"{backbone}__{strategy}" / "chosen.json"


def write_chosen(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def read_chosen(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
