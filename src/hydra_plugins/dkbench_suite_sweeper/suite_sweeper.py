"""`hydra/sweeper=dkbench_suite`: run every compatible, unfinished cell of a suite.

It expands `cfg.suite` into cells, composes each cell's config, records incompatible cells
(strategy `requires` ⊄ dataset `provides`, or unsupported task) in their run folders, skips
cells whose `DONE` carries the same config hash, and hands the rest to the configured Hydra
launcher (basic = sequential in process, joblib, submitit, ray) in batches, printing progress.
Imports of dkbench stay inside methods: Hydra imports every plugin at start-up.
"""


import logging
import time
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("dkbench.sweep")


#: Cells per parallel worker in one launcher call (see `_batch_size`).
BATCHES_PER_WORKER = 4


def batch_size(config: DictConfig, pending: int, max_batch_size: int | None = None) -> int:
    """Cells per launcher call. A call waits for its slowest cell, so a batch of exactly the
    launcher's parallelism idles workers whenever cell durations differ; within a call the
    launcher hands cells to free workers itself. Progress is printed after each call.

    - ``hydra.sweeper.max_batch_size`` when given;
    - joblib (``n_jobs``): BATCHES_PER_WORKER × n_jobs;
    - submitit_slurm (``array_parallelism``): one job array of BATCHES_PER_WORKER ×
      array_parallelism cells, SLURM running ``array_parallelism`` of them at once;
    - Ray (``ray``): every pending cell as a task at once; Ray's scheduler runs as many as the
      cluster has resources for (``remote.num_cpus`` / ``num_gpus`` each), which the sweep
      cannot know before ``ray.init``;
    - otherwise (basic, in process; submitit_local, one process per cell): 1.
    """
    if max_batch_size:
        return int(max_batch_size)
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs")
    if n_jobs and int(n_jobs) > 0:
        return BATCHES_PER_WORKER * int(n_jobs)
    array = OmegaConf.select(config, "hydra.launcher.array_parallelism")
    if array and int(array) > 0:
        return BATCHES_PER_WORKER * int(array)
    if OmegaConf.select(config, "hydra.launcher.ray") is not None:
        return max(int(pending), 1)
    return 1


@dataclass
class SuiteSweeperConf:
    _target_: str = "hydra_plugins.dkbench_suite_sweeper.suite_sweeper.SuiteSweeper"
    #: Cells per launcher call (null: chosen from the launcher's parallelism, see `batch_size`),
    #: so progress is reported while the sweep runs.
    max_batch_size: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="dkbench_suite", node=SuiteSweeperConf, provider="dkbench")


class SuiteSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None):
        self.max_batch_size = max_batch_size
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _batch_size(self, pending: int) -> int:
        return batch_size(self.config, pending, self.max_batch_size)

    def sweep(self, arguments: list[str]) -> Any:
        from dkbench.errors import UserError
        from dkbench.runner.sweep import LAST_SWEEP, plan_cells
        from dkbench.runner.tuning import protocol

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        if OmegaConf.select(self.config, "suite") is None:
            raise ValueError("dkbench_suite sweeper needs a suite: add `suite=<name>` (see `dkbench list suites`)")
        suite = OmegaConf.to_container(self.config.suite, resolve=True)
        suite["name"] += str(OmegaConf.select(self.config, "variant", default="") or "")  # run_folder.variant_suffix
        suite["protocol"] = OmegaConf.select(self.config, "protocol", default="default")
        suite["tuning"] = OmegaConf.to_container(self.config.tuning, resolve=True) if "tuning" in self.config else {}
        print(f"runs → {self.config.paths.runs_dir} · reports → {self.config.paths.reports_dir} "
              "(paths.root_dir, env DKBENCH_ROOT)", flush=True)
        loader = self.hydra_context.config_loader

        def load(overrides: list[str]) -> DictConfig:
            return loader.load_sweep_config(self.config, overrides)

        try:
            if protocol(suite) == "tuned":
                return self._tuned(suite, arguments, load)
            plan = plan_cells(suite, arguments, load)
        except UserError as err:  # a bad name or setting: the CLI prints it as one line, exit 2
            LAST_SWEEP.update(error=str(err))
            return []
        results: list[Any] = []
        self._run_plan(plan, results)
        return results

    def _run_plan(self, plan: Any, results: list[Any], externals: bool = True) -> Any:
        from dkbench.errors import RunInterrupted
        from dkbench.runner.evaluate import evaluate_external_sets
        from dkbench.runner.signals import raise_on_signals
        from dkbench.runner.sweep import SweepProgress

        progress = SweepProgress(plan)
        progress.report_plan()
        try:  # SIGTERM / Ctrl-C between cells: stop launching, report what finished
            with raise_on_signals():
                self._launch(plan, progress, results)
                if externals and plan.suite.get("external") and progress.interrupted_by is None:
                    counts = evaluate_external_sets(plan.suite, plan.folders, plan.cells)
                    print(f"external test sets: {counts['evaluated']} evaluated, {counts['already']} already done, "
                          f"{counts['failed']} failed", flush=True)
                    progress.counts["failed"] += counts["failed"]
        except RunInterrupted as err:
            progress.interrupted_by = err.signum
        progress.report_end()
        return progress

    def _tuned(self, suite: dict, arguments: list[str], load: Any) -> list[Any]:
        """The tuned protocol: every group's N trials, then its seeds at the trial chosen on
        validation (dkbench/runner/tuned_sweep.py). The exit status counts both phases."""
        from dkbench.runner.sweep import LAST_SWEEP
        from dkbench.runner.tuned_sweep import incompatible_groups, plan_final, plan_trials, select_groups

        assert self.config is not None
        results: list[Any] = []
        trials = plan_trials(suite, arguments, load)
        print(f"tuned protocol: {trials.options['trials']} trials per cell ({trials.options['sampler']} search, "
              f"seed {trials.options['trial_seed']}, selected on validation), then seeds {list(suite['seeds'])}",
              flush=True)
        first = self._run_plan(trials.plan, results, externals=False)
        phase_one = dict(LAST_SWEEP)
        if first.interrupted_by is not None:
            return results
        chosen = select_groups(suite, trials, self.config.paths.runs_dir, str(self.config.monitor.metric),
                               str(self.config.monitor.mode))
        waiting = len(trials.groups) - len(chosen) - len({(c.dataset, c.backbone, c.strategy)
                                                          for c, _ in trials.plan.incompatible})
        if waiting:
            print(f"tuned protocol: {waiting} cell(s) keep an unfinished trial; their seeds wait for the next sweep",
                  flush=True)
        final = plan_final(suite, arguments, load, chosen, incompatible_groups(trials))
        if final is None:
            return results  # LAST_SWEEP still holds the trials' counts
        self._run_plan(final, results)
        for key in ("done", "failed", "no_data", "total"):  # the exit status counts both phases
            LAST_SWEEP[key] = LAST_SWEEP.get(key, 0) + phase_one.get(key, 0)
        return results

    def _launch(self, plan: Any, progress: Any, results: list[Any]) -> None:
        assert self.launcher is not None
        size = self._batch_size(len(plan.pending))
        if plan.prestages:  # pre-stage runs first, so no cell waits for another cell's pre-stage
            returns = self._call_launcher([p.overrides for p in plan.prestages], 0,
                                          [(p.run_dir, p.config_hash) for p in plan.prestages])
            progress.record_prestages(plan.prestages, returns)
            results.append(returns)
        pending = plan.pending
        for start in range(0, len(pending), size):
            batch = pending[start : start + size]
            began = time.time()
            returns = self._call_launcher([list(c.overrides) for c in batch], len(plan.prestages) + start,
                                          [plan.folders[c.label] for c in batch])
            progress.record(batch, returns, time.time() - began, parallel=size)
            results.append(returns)
            if progress.interrupted_by is not None:  # a cell was stopped by a signal: launch no more
                return

    def _call_launcher(self, jobs: list[list[str]], first_idx: int, folders: list[tuple[str, str]]) -> list[Any]:
        """One launcher call. A launcher that raises instead of returning (a SLURM job cancelled
        before it could report, a Ray worker that died with no retries left, a lost node) loses the
        whole batch's returns: each cell is then judged by its run folder (DONE with its config
        hash, or lost), the sweep goes on with the next batch and exits 1 at the end."""
        from dkbench.errors import RunInterrupted
        from dkbench.runner.sweep import LostJob

        assert self.launcher is not None
        try:
            return list(self.launcher.launch(jobs, initial_job_idx=first_idx))
        except RunInterrupted:  # Ctrl-C / SIGTERM of the sweep itself: handled by _run_plan
            raise
        except Exception as err:  # noqa: BLE001 - any launcher failure becomes failed cells, not a traceback
            log.warning("the launcher failed for %d job(s): %s: %s", len(jobs), type(err).__name__, err)
            return [LostJob(run_dir, cfg_hash, err) for run_dir, cfg_hash in folders]
