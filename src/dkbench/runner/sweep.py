"""Planning and reporting a suite sweep (used by the `dkbench_suite` Hydra sweeper).

`plan_cells` decides, for every cell, one of: incompatible (recorded with its reason, never
launched), done (same config hash already finished: skipped, files untouched), or pending. It
also collects the pending cells' pre-stage runs (`Strategy.prestage_runs`: a source model, a
curriculum teacher), once per run folder and config hash, which the sweeper launches first.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

import dkbench.config  # noqa: F401  (registers the resolvers the configs use)
from dkbench.backbones.registry import task_incompatibility
from dkbench.config import group_files
from dkbench.data.loading import spec_from_config
from dkbench.data.registry import MissingDataError
from dkbench.errors import RunConfigError, RunInterrupted
from dkbench.runner.placement import placed
from dkbench.runner.preflight import check_run_config
from dkbench.runner.run_folder import RunFolder, RunLockedError, adopt_unsuffixed, config_hash
from dkbench.runner.suite import Cell, expand_suite, validate_suite
from dkbench.storage import content_key
from dkbench.strategies import strategy_from_config

log = logging.getLogger("dkbench.sweep")

#: How the last sweep of this process ended (`SweepProgress.report_end`): the CLI's exit status
#: reads it, since Hydra's multirun returns nothing to its caller.
LAST_SWEEP: dict[str, int] = {}


@dataclass(frozen=True)
class Prestage:
    """An unfinished pre-stage run, or a cached artefact, launched as a job of a cell that needs
    it (`prestage_only=<role>`); `run_dir` / `config_hash` identify it (for an artefact: the
    cache and its content key)."""

    cell: Cell
    role: str
    run_dir: str
    config_hash: str

    @property
    def overrides(self) -> list[str]:
        return [*self.cell.overrides, f"prestage_only={self.role}"]

    @property
    def label(self) -> str:
        return f"{self.role} of {self.cell.label} → {self.run_dir}"


@dataclass
class SweepPlan:
    suite: dict
    cells: list[Cell]
    pending: list[Cell] = field(default_factory=list)
    done: list[Cell] = field(default_factory=list)
    incompatible: list[tuple[Cell, str]] = field(default_factory=list)
    #: unfinished pre-stage runs of the pending cells, one per (run folder, config hash)
    prestages: list[Prestage] = field(default_factory=list)
    #: cell label → (run folder, config hash) of every compatible cell
    folders: dict[str, tuple[str, str]] = field(default_factory=dict)


def _valid_names() -> dict[str, list[str]]:
    return {
        "dataset": list(group_files("dataset")),
        "backbone": list(group_files("backbone")),
        "strategy": list(group_files("strategy")),
    }


#: command-line overrides that would collapse an axis of several values onto one for every cell
#: (on an axis of one value they just replace it, e.g. a smaller dataset for a smoke test)
AXIS_OVERRIDES = {"seed": "suite.seeds=[5]", "dataset": "suite.datasets=[probe]",
                  "backbone": "suite.backbones=[tinycnn]", "strategy": "suite.strategies=[baseline]"}


def _check_post_hoc_settings(suite: dict, strategy: str) -> None:
    """A post-hoc strategy's run evaluates the baseline cell's network, so its own settings may
    change only its outputs (`strategy.*`); anything else would be another network."""
    others = [o for o in ((suite.get("per_strategy") or {}).get(strategy) or [])
              if not o.lstrip("+~").startswith("strategy.")]
    if others:
        raise RunConfigError(f"suite '{suite['name']}': per_strategy.{strategy} sets {others}, but '{strategy}' is "
                             "post-hoc (it evaluates the baseline run's network): only strategy.* options can differ; "
                             "move the others to `overrides` / `per_dataset`, which the baseline shares")


def plan_cells(suite: dict, arguments: Sequence[str], load: Callable[[list[str]], DictConfig],
               cells: list[Cell] | None = None) -> SweepPlan:
    """Classify the suite's cells (or the given `cells`, e.g. the trials of the tuned protocol)."""
    for argument in arguments:  # `seed=5` would give every cell seed 5: three "done" seeds, one folder
        axis = argument.lstrip("+~").split("=", 1)[0]
        if axis in AXIS_OVERRIDES and len(suite.get(f"{axis}s" if axis != "strategy" else "strategies") or ()) > 1:
            raise RunConfigError(f"{argument}: a sweep takes its {axis}s from the suite; choose them with "
                                 f"{AXIS_OVERRIDES[axis]} (or run one cell with `dkbench train`)")
    validate_suite(suite, _valid_names())
    plan = SweepPlan(suite=suite, cells=expand_suite(suite, list(arguments)) if cells is None else list(cells))
    seen: set[tuple[str, str]] = set()
    for cell in plan.cells:
        cfg = load(list(cell.overrides))
        check_run_config(cfg)  # a bad name or setting stops the sweep before anything is written
        if cell.dataset in (suite.get("external") or {}) and not cfg.get("keep_checkpoints", True):
            raise RunConfigError(f"suite '{suite['name']}' has external test sets for '{cell.dataset}', which "
                                 "need the runs' weights: drop keep_checkpoints=false (or the `external:` entry)")
        spec = spec_from_config(cfg.dataset)
        strategy = strategy_from_config(cfg.strategy)
        if strategy.post_hoc:
            _check_post_hoc_settings(suite, cell.strategy)
        reason = strategy.incompatibility(spec, cfg.backbone.arch)
        if reason is None:
            reason = task_incompatibility(cfg.backbone.arch, spec.task)
        run = RunFolder(cfg.paths.run_dir)
        cfg_hash = config_hash(cfg)
        adopt_unsuffixed(cfg, cfg_hash)  # a run from before variant suffixes: found, not recomputed
        if reason is not None:
            run.path.mkdir(parents=True, exist_ok=True)
            run.set_status("incompatible", cfg_hash, reason=reason)
            plan.incompatible.append((cell, reason))
            continue
        plan.folders[cell.label] = (str(run.path), cfg_hash)
        if run.is_done(cfg_hash):
            plan.done.append(cell)
        else:
            if run.path.exists() and run.done_hash is None and any(run.path.iterdir()):
                log.warning("%s: unfinished or corrupt run folder, it will be (re)run", cell.label)
            plan.pending.append(cell)
            for role, prestage_cfg in strategy.prestage_runs(cfg).items():
                key = (str(prestage_cfg.paths.run_dir), config_hash(prestage_cfg))
                if key not in seen and not RunFolder(key[0]).is_done(key[1]):
                    plan.prestages.append(Prestage(cell, role, *key))
                seen.add(key)
            # cached artefacts: whether one exists depends on the data's content, which the plan
            # does not load; each distinct one gets a job (a cache hit there costs a data load)
            for role, identity in strategy.prestage_artefacts(cfg).items():
                key = (f"{role} cache", content_key(role, identity))
                if key not in seen:
                    plan.prestages.append(Prestage(cell, role, *key))
                seen.add(key)
    if not plan.pending and not plan.done:
        reasons = "\n  ".join(f"{c.label}: {r}" for c, r in plan.incompatible)
        raise ValueError(f"suite '{suite['name']}' has no compatible cell:\n  {reasons}")
    return plan


class SweepProgress:
    """One line per finished cell and a running total with ETA."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.total = len(plan.pending)
        self.finished = 0
        self.counts: Counter[str] = Counter()
        self.started = time.time()
        #: the signal that stopped a cell (SIGTERM / SIGINT); the sweep then launches no more
        self.interrupted_by: int | None = None

    def report_plan(self) -> None:
        p = self.plan
        print(
            f"suite '{p.suite['name']}': {len(p.cells)} cells — {len(p.pending)} to run, "
            f"{len(p.done)} already done (skipped), {len(p.incompatible)} incompatible",
            flush=True,
        )
        if p.prestages:
            print(f"  {len(p.prestages)} pre-stage run(s) first (shared by the cells that need them):", flush=True)
            for prestage in p.prestages:
                print(f"    {prestage.label}", flush=True)
        grouped: dict[tuple[str, str], list[str]] = {}
        for cell, reason in p.incompatible:  # one line per dataset × backbone × strategy
            key = (f"{cell.dataset}/{cell.backbone}__{cell.strategy}", reason)
            grouped.setdefault(key, []).append(f"{cell.tag}/seed_{cell.seed}" if cell.tag else str(cell.seed))
        for (label, reason), seeds in grouped.items():
            what = "runs" if any("/" in s for s in seeds) else "seeds"
            print(f"  incompatible {label} ({what} {', '.join(seeds)}): {reason}", flush=True)

    def record_prestages(self, prestages: list[Prestage], returns: list[Any]) -> None:
        for prestage, ret in zip(prestages, returns, strict=True):
            outcome = _outcome(ret)
            detail = outcome.get("summary") or outcome.get("error", "")
            print(f"[pre-stage] {outcome['status']:<6} {prestage.label}  {detail}", flush=True)

    def record(self, batch: list[Cell], returns: list[Any], seconds: float, parallel: int) -> None:
        for cell, ret in zip(batch, returns, strict=True):
            self.finished += 1
            outcome = _outcome(ret)
            self.counts[outcome["status"]] += 1
            if outcome["status"] == "interrupted":
                self.interrupted_by = int(outcome["signum"])
            detail = outcome.get("summary") or outcome.get("error", "")
            print(f"[{self.finished}/{self.total}] {outcome['status']:<6} {cell.label}  {detail}", flush=True)
        elapsed = time.time() - self.started
        left = self.total - self.finished
        eta = elapsed / self.finished * left if self.finished else float("nan")
        print(
            f"  progress {self.finished}/{self.total} · done {self.counts['done']} · failed {self.counts['failed']}"
            f" · elapsed {elapsed / 60:.1f} min · ETA {eta / 60:.1f} min",
            flush=True,
        )

    def report_end(self) -> None:
        elsewhere = f"{self.counts['elsewhere']} running elsewhere, " if self.counts["elsewhere"] else ""
        no_data = f"{self.counts['no data']} without their data, " if self.counts["no data"] else ""
        print(
            f"sweep finished: {self.counts['done']} done, {self.counts['failed']} failed, {no_data}{elsewhere}"
            f"{len(self.plan.done)} skipped as already done, {len(self.plan.incompatible)} incompatible",
            flush=True,
        )
        LAST_SWEEP.clear()
        LAST_SWEEP.update(done=self.counts["done"], failed=self.counts["failed"], no_data=self.counts["no data"],
                          total=self.total)
        if self.interrupted_by is not None:
            LAST_SWEEP["interrupted"] = self.interrupted_by


@dataclass(frozen=True)
class LostJob:
    """The return of a cell whose launcher raised instead of reporting (see the sweeper's
    `_call_launcher`): what its run folder says decides whether it finished."""

    run_dir: str
    config_hash: str
    error: BaseException

    @property
    def return_value(self) -> dict[str, Any]:
        if RunFolder(self.run_dir).is_done(self.config_hash):
            return {"status": "done", "summary": "finished (its job's report was lost; the run folder says DONE)"}
        first = (str(self.error).strip().splitlines() or [""])[0][:300]
        return {"status": "failed", "error": f"the launcher lost this job ({type(self.error).__name__}: {first}); "
                                             "rerun the sweep: finished cells are skipped, this one resumes from its "
                                             "last checkpoint"}


def _outcome(job_return: Any) -> dict[str, Any]:
    """What a cell's job returned (`run_cell`), or the exception Hydra captured."""
    try:
        value = job_return.return_value
    except Exception as err:  # the job raised: Hydra stored the exception
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return value if isinstance(value, dict) and "status" in value else {"status": "done"}


@placed  # holds a GPU slot (runner/placement.py) for the job; does nothing without a GPU
def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """The task of one sweep job: train (the cell, or with `prestage_only` one of its pre-stage
    runs), and turn a failure into a recorded result."""
    from dkbench import mark_job_start

    job_started_at = mark_job_start()  # before the lazy import below: it is this job's overhead
    from dkbench.runner.train import train

    role = cfg.get("prestage_only")
    if role is not None:
        strategy = strategy_from_config(cfg.strategy)
        if str(role) in strategy.prestage_artefacts(cfg):
            from dkbench.runner.train import build_prestage_artefact

            try:
                done = build_prestage_artefact(cfg, str(role))
            except Exception as err:  # the cells that need it build it themselves, or fail there
                return _failed(err, f"pre-stage {role} of {cfg.paths.run_dir}")
            return {"status": "done", "summary": f"cached ({done['wall_time_s']:.0f}s)"}
        cfg, job_started_at = strategy.prestage_runs(cfg)[str(role)], None
    try:
        metrics = train(cfg, job_started_at=job_started_at, wait=role is not None)
    except RunInterrupted as err:  # SIGTERM / Ctrl-C: the sweep stops launching cells
        return {"status": "interrupted", "error": str(err), "signum": err.signum}
    except RunLockedError:  # another sweep holds this cell right now: its result, not a failure
        return {"status": "elsewhere", "summary": "being run by another process"}
    except MissingDataError as err:  # recorded in the run folder; data a suite uses only when present
        return {"status": "no data", "error": str(err).splitlines()[0]}
    except Exception as err:  # recorded in the run folder by train(); the sweep goes on
        return _failed(err, str(cfg.paths.run_dir))
    summary = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("test/") and "loss" not in k)
    return {"status": "done", "summary": f"{summary} ({metrics.get('wall_time_s', 0):.0f}s)", "metrics": metrics}


def _failed(err: Exception, what: str) -> dict[str, Any]:
    """A job's failure as the sweep reports it (the traceback goes to the job's log)."""
    log.exception("failed: %s", what)
    return {"status": "failed", "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
