"""The two phases of a tuned sweep (see `dkbench.runner.tuning` for the protocol).

1. `plan_trials`: every compatible (dataset, backbone, strategy) of the suite, controls included,
   gets N trial cells at the trial seed, each with its sampled overrides, in `<suite>@tuning`.
2. `plan_final`: once a group's N trials are all done, the best by validation is recorded in
   `chosen.json` and its setting runs at every seed of the suite in `<suite>@tuned`. A group with
   an unfinished trial is not selected (the budget is N for everyone) and waits for the next sweep.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dkbench.strategies import strategy_from_config

from dkbench.errors import RunConfigError
from dkbench.runner.run_folder import RunFolder
from dkbench.runner.suite import Cell, expand_suite
from dkbench.runner.sweep import SweepPlan, plan_cells
from dkbench.runner.tuning import (
    TUNED_SUFFIX,
    TUNING_SUFFIX,
    TrialResult,
    chosen_path,
    sample_trial,
    search_space,
    select_trial,
    trial_overrides,
    tuning_options,
    validation_metric,
    validation_only,
    write_chosen,
)

Load = Callable[[list[str]], DictConfig]
Group = tuple[str, str, str]  # dataset, backbone, strategy


@dataclass
class TrialPlan:
    plan: SweepPlan
    options: dict[str, Any]
    #: (dataset, backbone, strategy) → [(trial, sampled params, cell)], trial order
    groups: dict[Group, list[tuple[int, dict[str, Any], Cell]]] = field(default_factory=dict)


def _group(cell: Cell) -> Group:
    return cell.dataset, cell.backbone, cell.strategy


def plan_trials(suite: dict, arguments: Sequence[str], load: Load) -> TrialPlan:
    options = tuning_options(suite)
    trial_suite = {**suite, "name": suite["name"] + TUNING_SUFFIX, "seeds": [options["trial_seed"]]}
    cells, groups = [], {}
    for base in expand_suite(trial_suite, list(arguments)):
        cfg = load(list(base.overrides))
        space = search_space(cfg)
        identity = (suite["name"], *_group(base))
        if strategy_from_config(cfg.strategy).post_hoc:
            # its network is the baseline's (strategies/base.py: baseline_twin): trial k draws the
            # baseline's trial k, so it evaluates that very run, and raw-output selection picks
            # the trial the baseline picks
            if any(key.startswith("strategy.options.") for key in space):
                raise RunConfigError(f"strategy '{base.strategy}' is post-hoc (it evaluates the baseline's networks) "
                                     "and cannot tune options of its own in the tuned protocol: set its `search: {}`")
            identity = (suite["name"], base.dataset, base.backbone, "baseline")
        for trial in range(options["trials"]):
            params = sample_trial(space, identity, trial)
            tag = f"@trial{trial:02d}"
            cell = Cell(base.dataset, base.backbone, base.strategy, base.seed,
                        (*base.overrides, *trial_overrides(params), f"tag={tag}"), tag=tag)
            cells.append(cell)
            groups.setdefault(_group(base), []).append((trial, params, cell))
    return TrialPlan(plan_cells(trial_suite, arguments, load, cells=cells), options, groups)


def _trial_results(trials: TrialPlan, group: Group) -> list[TrialResult] | None:
    """The group's trials with their validation metrics, or None while one is not done."""
    results = []
    for trial, params, cell in trials.groups[group]:
        folder = trials.plan.folders.get(cell.label)
        if folder is None or not RunFolder(folder[0]).is_done(folder[1]):
            return None
        metrics = json.loads((Path(folder[0]) / "metrics.json").read_text())
        results.append(TrialResult(trial, params, validation_only(metrics), folder[1], folder[0]))
    return results


def select_groups(suite: dict, trials: TrialPlan, runs_dir: str | Path, monitor: str, mode: str) -> dict[Group, dict]:
    """Choose each complete group's trial and record it; → group: chosen record."""
    metric = validation_metric(suite, monitor)
    chosen = {}
    for group in trials.groups:
        results = _trial_results(trials, group)
        if results is None:
            continue
        try:
            best = select_trial(results, metric, mode)
        except ValueError as err:  # every trial diverged: nothing to choose, said, never guessed
            print(f"tuned protocol: {'/'.join(group)} has no trial to choose: {err}", flush=True)
            continue
        record = {
            "trial": best.trial, "params": best.params, "selected_by": metric, "mode": mode,
            "rule": f"best {metric} ({mode}) of {len(results)} trials at seed {trials.options['trial_seed']}; "
                    "ties → the lower trial (trial 0 = the defaults)",
            "budget": {k: trials.options[k] for k in ("trials", "sampler", "trial_seed")},
            "trials": [{"trial": r.trial, "params": r.params, metric: r.validation.get(metric),
                        "config_hash": r.config_hash, "run_dir": r.run_dir} for r in results],
        }
        write_chosen(chosen_path(runs_dir, suite["name"], *group), record)
        chosen[group] = record
    return chosen


def incompatible_groups(trials: TrialPlan) -> set[Group]:
    return {_group(cell) for cell, _ in trials.plan.incompatible}


def plan_final(suite: dict, arguments: Sequence[str], load: Load, chosen: dict[Group, dict],
               incompatible: set[Group] = frozenset()) -> SweepPlan | None:
    """The suite's seeds at each chosen setting, in `<suite>@tuned`; None if nothing is chosen yet.
    The `incompatible` groups' cells are planned too, so `<suite>@tuned` records them (with the
    reason) as the default protocol does, instead of showing them as never run."""
    tuned_suite = {**suite, "name": suite["name"] + TUNED_SUFFIX}
    cells = [Cell(c.dataset, c.backbone, c.strategy, c.seed,
                  (*c.overrides, *trial_overrides(chosen[_group(c)]["params"] if _group(c) in chosen else {})))
             for c in expand_suite(tuned_suite, list(arguments)) if _group(c) in chosen or _group(c) in incompatible]
    return plan_cells(tuned_suite, arguments, load, cells=cells) if any(_group(c) in chosen for c in cells) else None
