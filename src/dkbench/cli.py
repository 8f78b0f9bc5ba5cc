"""`dkbench train | sweep | report | demo | list …` — the command-line front door.

`train` and `sweep` hand their arguments to Hydra unchanged, so every Hydra feature works:
overrides (`trainer.max_epochs=5`), `--cfg job`, launchers (`hydra/launcher=joblib`).
"""

from __future__ import annotations

import errno
import os
import sys

from dkbench.errors import RunInterrupted, UserError

USAGE = """usage: dkbench <command> [args]

commands:
  train  [overrides]           one run, e.g. dkbench train dataset=breastmnist backbone=resnet18_28
  sweep  suite=<name> [overrides]
                               every compatible cell of a suite; finished cells are skipped
                               (hydra/launcher=joblib hydra.launcher.n_jobs=2 for parallel runs)
  report suite=<name> [overrides] [compare=<suite folder>] [compare_runs=<runs dir>] [publish=<folder>]
                               leaderboard from the suite's run folders → reports/<suite>/
                               (md, self-contained interactive html, csv, booktabs tex; heatmap and
                               CD diagram as png + svg + pdf); publish=docs/results also writes
                               <suite>_leaderboard.md and its figures there, links renamed to match;
                               with compare= / compare_runs=: this
                               suite (A) beside another suite folder (B, e.g. <suite>@tuned) or the
                               same suite in another runs folder, B − A per cell →
                               reports/<A>__vs__<B>/ (compare.md, .html, .csv)
  evaluate run=<run folder> dataset=<name> [split=test] [dataset overrides]
                               external validation: a finished run's selected model scored on
                               another dataset → <run>/external/<dataset>/metrics.json
  reproduce run=<run folder> [into=<folder>] [tolerance=0]
                               retrain a finished run from its own config.yaml with today's code into
                               <folder> (default <root>/reproduce) and compare every val/test number,
                               the selected epoch, config hash and data checksum; exit 1 if they differ
  demo   [overrides]           the main job: sweep + report of the `demo` suite, offline
  list   datasets|backbones|strategies|experiments|suites
                               what `dataset=…`, `backbone=…` etc. accept

options (any command):
  --configs DIR                a folder of your own configs (dataset/, backbone/, strategy/, suite/,
                               ...) added to dkbench's; repeatable; or env DKBENCH_USER_CONFIGS
"""


def _hydra_entry(argv: list[str]) -> object:
    """Run Hydra's main with `argv`; returns the task's return value (runs) or None (sweeps)."""
    import hydra
    from omegaconf import DictConfig

    from dkbench.config import config_dir

    result: dict[str, object] = {}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
    def main(cfg: DictConfig) -> object:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            from dkbench.runner.sweep import run_cell

            outcome = run_cell(cfg)
            metric = cfg.get("optimized_metric")
            if metric:  # hyperparameter search: the sweeper optimises this number
                return _selected_value(outcome.get("metrics") or {}, metric, cfg)
            return outcome
        from dkbench.runner.train import train

        try:
            result["metrics"] = train(cfg)
        except Exception as err:  # printed by `main` as one line (DKBENCH_TRACEBACK=1: raised)
            if not _said_in_one_line(err) or os.environ.get("DKBENCH_TRACEBACK"):
                raise
            result["user_error"] = err
        return result.get("metrics")

    from dkbench.config import searchpath_overrides

    sys.argv = [*argv, *searchpath_overrides()]  # the user's config folders, when given
    main()
    if "user_error" in result:
        raise result["user_error"]  # type: ignore[misc]
    return result.get("metrics")


#: errno values of a full disk or an exhausted quota
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _said_in_one_line(err: BaseException) -> bool:
    """Errors `main` reports as one line: bad input, a signal, a full disk."""
    return isinstance(err, UserError | RunInterrupted) or (isinstance(err, OSError) and err.errno in DISK_FULL)


def _selected_value(metrics: dict, metric: str, cfg) -> float:
    """Validation metric of the selected checkpoint (never a test number) for optimisers."""
    if not metrics:
        return float("nan")
    if metric == cfg.monitor.metric:
        return float(metrics["selection"]["best_score"])
    if metric.startswith("test/"):
        raise ValueError("optimise a validation metric (val/...), never a test metric")
    raise ValueError(f"optimized_metric '{metric}' must equal monitor.metric ('{cfg.monitor.metric}')")


def _sweep(rest: list[str]) -> int:
    """The sweep; exit status 1 when any cell failed (each failure is recorded in its run folder's
    status.json and printed above), so scripts and schedulers see it."""
    from dkbench.runner.sweep import LAST_SWEEP

    from dkbench.runner.compose import compose_config

    LAST_SWEEP.clear()
    # unknown suite / config names and malformed overrides: refused in one line before Hydra starts
    compose_config([o for o in rest if not o.startswith(("hydra/", "hydra.", "-"))])
    _hydra_entry(["dkbench sweep", "-m", "hydra/sweeper=dkbench_suite", *rest])
    if "error" in LAST_SWEEP:
        print(f"dkbench sweep: {LAST_SWEEP['error']}", file=sys.stderr)
        return 2
    if LAST_SWEEP.get("interrupted"):
        raise RunInterrupted(LAST_SWEEP["interrupted"])  # printed by `main` as one line
    if LAST_SWEEP.get("no_data"):  # not a failure: e.g. the demo uses BreastMNIST only when present
        print(f"dkbench sweep: {LAST_SWEEP['no_data']} cell(s) skipped because their data is not under "
              "paths.data_dir (env DKBENCH_DATA); the lines above name each missing file and how to get it",
              file=sys.stderr)
    failed = LAST_SWEEP.get("failed", 0)
    if failed:
        print(f"dkbench sweep: {failed} of {LAST_SWEEP['total']} cell(s) failed (their status.json holds the "
              "error); fix the cause and rerun: finished cells are skipped", file=sys.stderr)
        return 1
    return 0


def _report(rest: list[str]) -> int:
    from dkbench.runner.reporting import report_suite

    return 0 if report_suite(rest) else 1


def _evaluate(rest: list[str]) -> int:
    from dkbench.errors import RunConfigError
    from dkbench.runner.evaluate import evaluate

    run = [a.split("=", 1)[1] for a in rest if a.startswith("run=")]
    split = [a.split("=", 1)[1] for a in rest if a.startswith("split=")]
    overrides = [a for a in rest if not a.startswith(("run=", "split="))]
    if len(run) != 1 or not any(a.startswith("dataset=") for a in overrides):
        raise RunConfigError("evaluate needs one run folder and a dataset: "
                             "`dkbench evaluate run=runs/<suite>/<dataset>/<backbone>__<strategy>/seed_0 dataset=<name>`")
    record = evaluate(run[0], overrides, split=split[0] if split else "test")
    print(" ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("test/")))
    return 0


def _reproduce(rest: list[str]) -> int:
    import logging

    from dkbench.errors import RunConfigError
    from dkbench.runner.reproduce import reproduce, summary_line

    options = dict(a.split("=", 1) for a in rest if "=" in a)
    unknown = sorted(set(options) - {"run", "into", "tolerance"}) + [a for a in rest if "=" not in a]
    if "run" not in options or unknown:
        raise RunConfigError("reproduce takes run=<run folder> [into=<folder>] [tolerance=<absolute>]"
                             + (f"; not {', '.join(unknown)}" if unknown else ""))
    try:
        tolerance = float(options.get("tolerance", 0.0))
    except ValueError:
        raise RunConfigError(f"tolerance={options['tolerance']!r} is not a number (0: identical)") from None
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    record = reproduce(options["run"], options.get("into"), tolerance)
    print(summary_line(record))
    return 0 if record["agrees"] else 1


def _list(what: str | None) -> int:
    from dkbench.listing import LISTERS

    if what not in LISTERS:
        print(f"usage: dkbench list {'|'.join(LISTERS)}", file=sys.stderr)
        return 2
    print(LISTERS[what]())
    return 0


def _take_configs_flag(argv: list[str]) -> list[str]:
    """`--configs DIR` (repeatable, anywhere): the user's config folders, passed on through the
    environment so that sweep workers and pre-stage runs see them too."""
    from dkbench.config import USER_CONFIGS_ENV

    rest, dirs = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--configs":
            dirs.append(os.path.abspath(next(args, "")))
        elif arg.startswith("--configs="):
            dirs.append(os.path.abspath(arg.split("=", 1)[1]))
        else:
            rest.append(arg)
    if dirs:
        known = [d for d in os.environ.get(USER_CONFIGS_ENV, "").split(os.pathsep) if d]
        os.environ[USER_CONFIGS_ENV] = os.pathsep.join(dict.fromkeys([*dirs, *known]))
    return rest


def main(argv: list[str] | None = None) -> int:
    argv = _take_configs_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    from hydra.errors import HydraException

    try:
        return _run(command, rest)
    except HydraException as err:  # an unknown config name or key, a malformed override
        if os.environ.get("DKBENCH_TRACEBACK"):
            raise
        print(f"dkbench {command}: {_hydra_message(err)}", file=sys.stderr)
        return 2
    except UserError as err:  # bad input: its message names the setting and the fix
        if os.environ.get("DKBENCH_TRACEBACK"):
            raise
        print(f"dkbench {command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL or os.environ.get("DKBENCH_TRACEBACK"):
            raise
        # every file is written atomically: what finished is whole, this run is `failed` and redone
        print(f"dkbench {command}: the disk is full ({err.filename or 'writing results'}); free space and "
              "rerun the same command: finished runs are kept and skipped, this one is redone", file=sys.stderr)
        return 1
    except RunInterrupted as err:  # SIGTERM / Ctrl-C: the run says `interrupted` and resumes on rerun
        print(f"dkbench {command}: {err}", file=sys.stderr)
        return 128 + err.signum


def _hydra_message(err: Exception) -> str:
    """Hydra's composition errors as one line: an unknown name with the valid ones, or what
    failed with Hydra's own hint (e.g. "use +key=value to add a key")."""
    import re

    from dkbench.config import group_files

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = lines[0] if lines else type(err).__name__
    unknown = re.search(r"Could not find '([\w/]+)/([^']+)'", head)
    if unknown:
        group, name = unknown.groups()
        names = sorted(group_files(group))
        return f"{group}={name}: no such {group}; valid names: {', '.join(names)} (see `dkbench list`)"
    if "override_grammar" in str(err):
        return f"malformed override ({head}); write key=value, quote lists: 'key=[a,b]'"
    return " ".join(lines[:3])


def _preflight(overrides: list[str]) -> None:
    """Compose the run config and check it (`dkbench.runner.preflight`) before Hydra starts: Hydra
    creates the run folder (its log file) before the task runs, and the folder's path is built
    from names the check must refuse first."""
    from dkbench.runner.compose import compose_config
    from dkbench.runner.preflight import check_cell

    if "-m" in overrides or "--multirun" in overrides:
        return  # a search: every trial is checked by `train` itself (its values come from the sweeper)
    if any(flag in overrides for flag in HYDRA_NO_RUN_FLAGS):
        return  # `--cfg job`, `--info`, `--help`: Hydra prints and runs nothing, so there is nothing to refuse
    cfg = compose_config(_overrides_only(overrides))
    check_cell(cfg)
    from dkbench.runner.run_folder import adopt_unsuffixed, config_hash

    if adopt_unsuffixed(cfg, config_hash(cfg)):  # before Hydra creates the folder for its log
        print(f"dkbench: moved the finished run of these settings into {cfg.paths.run_dir}", file=sys.stderr)


# Hydra's command-line flags that take a value (`--cfg job`, `-cn name`, ...) and those that print
# instead of running; neither the flags nor their values are config overrides.
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
HYDRA_NO_RUN_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc"}


def _overrides_only(args: list[str]) -> list[str]:
    """The config overrides among `dkbench train` arguments: Hydra's own flags, their values and
    `hydra.*` / `hydra/*` settings left out."""
    plain, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in HYDRA_VALUE_FLAGS:
            skip_next = True
        elif not arg.startswith(("hydra/", "hydra.", "-")):
            plain.append(arg)
    return plain


def _with_variant(args: list[str]) -> list[str]:
    """`args` plus `variant=@...` naming the command-line settings that change results
    (`run_folder.variant_suffix`): such a run gets its own folder instead of superseding the
    default one. A search (`-m`) varies its values per trial and keeps its own folders."""
    from dkbench.config import config_dirs
    from dkbench.runner.run_folder import variant_suffix

    if "-m" in args or "--multirun" in args or any(a.startswith("variant=") for a in args):
        return args
    from dkbench.runner.reporting import REPORT_OPTIONS

    groups = {p.name for folder in config_dirs() for p in folder.iterdir() if p.is_dir()}
    settings = [a for a in _overrides_only(args) if a.lstrip("+").partition("=")[0] not in REPORT_OPTIONS]
    suffix = variant_suffix(settings, sorted(groups))  # `report compare=B` names what to read, not a setting
    return [*args, f"variant={suffix}"] if suffix else args


def _run(command: str, rest: list[str]) -> int:
    if command in ("train", "sweep", "report", "demo"):
        rest = _with_variant(rest)
    if command == "train":
        _preflight(rest)
        _hydra_entry(["dkbench train", *rest])
    elif command == "sweep":
        return _sweep(rest)
    elif command == "report":
        return _report(rest)
    elif command == "evaluate":
        return _evaluate(rest)
    elif command == "reproduce":
        return _reproduce(rest)
    elif command == "demo":
        has_suite = any(a.startswith("suite=") for a in rest)
        args = rest if has_suite else ["suite=demo", *rest]
        swept = _sweep(args)
        return max(swept, _report(args))  # the report shows what finished, failures included
    elif command == "list":
        return _list(rest[0] if rest else None)
    else:
        print(f"unknown command '{command}'.\n\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
