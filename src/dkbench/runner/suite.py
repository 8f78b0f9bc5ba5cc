"""A suite: a named grid (datasets × backbones × strategies × seeds) from `configs/suite/*.yaml`.

Expansion is pure (no Hydra, no torch), so it is cheap to test: each cell becomes the list of
Hydra overrides that composes its run config.

Controls (``controls:``) are extra cells outside the grid that bracket a shortcut dataset: for a
listed dataset D, ``{ceiling: C, strategy: S}`` runs strategy S on dataset C (the same data
without the shortcut) for every backbone and seed, with D's per-dataset overrides so that the
ceiling has exactly D's budget. The floor is D's own S cells, already in the grid. Only S runs
on C: running every strategy there would cost a whole dataset column for one reference row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from dkbench.errors import RunConfigError

SUITE_KEYS = {
    "name", "description", "datasets", "backbones", "strategies", "seeds", "baseline", "rank_metric",
    "metrics", "experiment", "overrides", "per_dataset", "per_backbone", "per_strategy", "controls",
    "external",  # {training dataset: [other datasets]}: external test sets (runner/evaluate.py)
    "protocol", "tuning",  # copied from the run config's top-level keys by the sweeper (runner/tuning.py)
}
CONTROL_KEYS = {"ceiling", "strategy"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str
    strategy: str
    seed: int
    overrides: tuple[str, ...]
    tag: str = ""  # a trial of the tuned protocol: "@trial03" (runner/tuning.py)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.backbone}__{self.strategy}{self.tag}/seed_{self.seed}"


def validate_suite(suite: Mapping[str, Any], valid: Mapping[str, Sequence[str]]) -> None:
    """Unknown keys or axis values → one error listing every problem and the valid names."""
    problems = [f"unknown suite key '{k}' (valid: {sorted(SUITE_KEYS)})" for k in suite if k not in SUITE_KEYS]
    for axis, plural in (("dataset", "datasets"), ("backbone", "backbones"), ("strategy", "strategies")):
        values = list(suite.get(plural) or [])
        if not values:
            problems.append(f"suite lists no {plural}")
        for value in values:
            if value not in valid[axis]:
                problems.append(f"unknown {axis} '{value}' (valid: {', '.join(sorted(valid[axis]))})")
    if suite.get("baseline") and suite["baseline"] not in (suite.get("strategies") or []):
        problems.append(f"baseline '{suite['baseline']}' is not among the suite's strategies")
    if not suite.get("seeds"):
        problems.append("suite lists no seeds")
    problems += _control_problems(suite, valid)
    for dataset, others in (suite.get("external") or {}).items():
        for name in [dataset, *(others or [])]:
            if name not in valid["dataset"]:
                problems.append(f"external: unknown dataset '{name}'")
    if problems:
        raise RunConfigError(f"suite '{suite.get('name', '?')}' is invalid: " + "; ".join(problems))


def controls(suite: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{dataset: {"ceiling": dataset, "strategy": strategy}}`` for the suite's controlled datasets
    that are in its grid (a control of a dataset left out, e.g. by ``suite.datasets=[...]``, is
    not run). The strategy defaults to the suite's baseline."""
    out = {}
    for dataset, spec in (suite.get("controls") or {}).items():
        if dataset in (suite.get("datasets") or []):
            spec = spec or {}
            out[str(dataset)] = {"ceiling": str(spec.get("ceiling")),
                                 "strategy": str(spec.get("strategy") or suite.get("baseline") or "baseline")}
    return out


def _control_problems(suite: Mapping[str, Any], valid: Mapping[str, Sequence[str]]) -> list[str]:
    problems = []
    for dataset, spec in (suite.get("controls") or {}).items():
        if not isinstance(spec, Mapping) or not spec.get("ceiling"):
            problems.append(f"controls.{dataset}: needs a mapping with 'ceiling' (and optionally 'strategy')")
            continue
        problems += [f"controls.{dataset}: unknown key '{k}' (valid: {sorted(CONTROL_KEYS)})"
                     for k in spec if k not in CONTROL_KEYS]
        if dataset not in valid["dataset"]:
            problems.append(f"controls: unknown dataset '{dataset}'")
        if spec["ceiling"] not in valid["dataset"]:
            problems.append(f"controls.{dataset}: unknown ceiling dataset '{spec['ceiling']}'")
        strategy = spec.get("strategy") or suite.get("baseline") or "baseline"
        if strategy not in valid["strategy"]:
            problems.append(f"controls.{dataset}: unknown strategy '{strategy}'")
    return problems


def _cell(suite: Mapping[str, Any], dataset: str, backbone: str, strategy: str, seed: Any,
          extra: Sequence[str], budget_of: str | None = None) -> Cell:
    """One cell; ``budget_of`` names the dataset whose per-dataset overrides apply (controls)."""
    overrides = [
        *([f"experiment={suite['experiment']}"] if suite.get("experiment") else []),
        f"dataset={dataset}", f"backbone={backbone}", f"strategy={strategy}", f"seed={seed}",
        f"suite_name={suite['name']}",
        *(suite.get("overrides") or []),
        *((suite.get("per_dataset") or {}).get(budget_of or dataset) or []),
        *((suite.get("per_backbone") or {}).get(backbone) or []),
        *((suite.get("per_strategy") or {}).get(strategy) or []),
        *extra,
    ]
    return Cell(dataset, backbone, strategy, int(seed), tuple(overrides))


def expand_suite(suite: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the grid with its overrides: axis choices, the preset, the suite-wide and
    per-axis overrides, then the command line's (`extra`), which win; then the control cells
    (see the module docstring), after the grid."""
    cells = [_cell(suite, dataset, backbone, strategy, seed, extra)
             for dataset, backbone, strategy, seed in product(
                 suite["datasets"], suite["backbones"], suite["strategies"], suite["seeds"])]
    seen = {c.label for c in cells}
    for dataset, spec in controls(suite).items():
        for backbone, seed in product(suite["backbones"], suite["seeds"]):
            cell = _cell(suite, spec["ceiling"], backbone, spec["strategy"], seed, extra, budget_of=dataset)
            if cell.label not in seen:  # the ceiling dataset may also be in the grid itself
                seen.add(cell.label)
                cells.append(cell)
    return cells
