"""A suite: a named grid (datasets × backbones × strategies × seeds) from `configs/suite/*.yaml`.

Expansion is pure (no Hydra, no torch), so it is cheap to test: each cell becomes the list of
Hydra overrides that composes its run config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

SUITE_KEYS = {
    "name", "description", "datasets", "backbones", "strategies", "seeds", "baseline", "rank_metric",
    "metrics", "experiment", "overrides", "per_dataset", "per_backbone", "per_strategy",
}


@dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str
    strategy: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.backbone}__{self.strategy}/seed_{self.seed}"


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
    if problems:
        raise ValueError(f"suite '{suite.get('name', '?')}' is invalid:\n  - " + "\n  - ".join(problems))


def expand_suite(suite: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the grid with its overrides: axis choices, the preset, the suite-wide and
    per-axis overrides, then the command line's (`extra`), which win."""
    cells = []
    for dataset, backbone, strategy, seed in product(
        suite["datasets"], suite["backbones"], suite["strategies"], suite["seeds"]
    ):
        overrides = [
            *([f"experiment={suite['experiment']}"] if suite.get("experiment") else []),
            f"dataset={dataset}", f"backbone={backbone}", f"strategy={strategy}", f"seed={seed}",
            f"suite_name={suite['name']}",
            *(suite.get("overrides") or []),
            *((suite.get("per_dataset") or {}).get(dataset) or []),
            *((suite.get("per_backbone") or {}).get(backbone) or []),
            *((suite.get("per_strategy") or {}).get(strategy) or []),
            *extra,
        ]
        cells.append(Cell(dataset, backbone, strategy, int(seed), tuple(overrides)))
    return cells
