"""The protocol a report's numbers come from, read from its run folders (not from the suite file,
which may have changed since): epochs, model selection, seeds, tuning budget and compute.

A reader judges a Δ by how it was obtained: 2 epochs or 50, the last epoch or the best validation
one, defaults or a tuned setting, on what hardware. Each line states what the done runs recorded
and says so when runs disagree (e.g. a sweep resumed with other settings), rather than picking one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dkbench.leaderboard.collect import cell_dir


@dataclass
class Protocol:
    epochs: str
    selection: str
    seeds: str
    budget: str
    compute: str
    code: str = "not recorded"

    def lines(self) -> list[tuple[str, str]]:
        return [("epochs", self.epochs), ("model selection", self.selection), ("seeds", self.seeds),
                ("tuning budget", self.budget), ("compute", self.compute), ("code", self.code)]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _max_epochs(run: Path) -> int | None:
    """`trainer.max_epochs` of a run's saved config (a plain YAML read: no interpolation needed)."""
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
        return int(config["trainer"]["max_epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _counted(counter: Counter, unit: str = "") -> str:
    """`12` when every run agrees, else `12 (90 runs), 8 (6 runs)`: disagreement is stated."""
    if not counter:
        return "not recorded"
    if len(counter) == 1:
        return f"{next(iter(counter))}{unit}"
    return "; ".join(f"{k}{unit} ({n} runs)" for k, n in counter.most_common()) + " — runs DISAGREE"


def read_protocol(runs_dir: str | Path, suite: dict, long: pd.DataFrame) -> Protocol:
    """The protocol of the done runs of ``suite`` under ``runs_dir`` (``long``: ``collect_runs``)."""
    done = long[long["status"] == "done"].drop_duplicates(["dataset", "backbone", "strategy", "seed"])
    max_epochs: dict[str, Counter] = {}  # per dataset: suites may give each dataset its own budget
    trained, rules, devices, commits = [], Counter(), Counter(), Counter()
    wall = 0.0
    for r in done.itertuples(index=False):
        run = cell_dir(runs_dir, suite["name"], r.dataset, r.backbone, r.strategy, r.seed)
        metrics, meta = _read(run / "metrics.json"), _read(run / "metadata.json")
        epochs = _max_epochs(run)
        if epochs is not None:
            max_epochs.setdefault(r.dataset, Counter())[epochs] += 1
        if isinstance(metrics.get("epochs_trained"), (int, float)):
            trained.append(int(metrics["epochs_trained"]))
        wall += float(metrics.get("wall_time_s") or 0.0)
        sel = metrics.get("selection") or {}
        if sel.get("checkpoint") == "last":
            rules["the last epoch"] += 1
        elif sel.get("monitor"):
            rules[f"the epoch with the best {sel['monitor']} ({sel.get('mode', 'max')}) on the validation split"] += 1
        if meta.get("git_sha"):
            commits[str(meta["git_sha"])[:7] + ("-dirty" if str(meta["git_sha"]).endswith("-dirty") else "")] += 1
        hw = meta.get("hardware") or {}
        if hw:
            devices["GPU" if hw.get("cuda") else f"CPU ({hw.get('cpu_count', '?')} cores)"] += 1

    overall = sum(max_epochs.values(), Counter())
    if len(overall) <= 1:
        epochs = f"max_epochs {_counted(overall)}"
    else:
        epochs = "max_epochs " + ", ".join(f"{d} {_counted(c)}" for d, c in max_epochs.items())
    if trained:  # fewer than max_epochs: early stopping or a time limit
        lo, hi = min(trained), max(trained)
        epochs += f"; trained {lo}" + (f"–{hi}" if hi != lo else "")
    selection = f"the weights of {_counted(rules)}; test scores never select" if rules else "not recorded"
    seeds = list(suite.get("seeds") or [])
    per_cell = done.groupby(["dataset", "backbone", "strategy"]).size()
    seeds_text = (f"{len(seeds)} planned per cell ({', '.join(str(s) for s in seeds)}); done per cell: "
                  + (f"{per_cell.min()}–{per_cell.max()}" if len(per_cell) and per_cell.min() != per_cell.max()
                     else f"{per_cell.max() if len(per_cell) else 0}"))
    compute = (f"{len(done)} done runs, {wall / 3600:.2f} h of run wall time in all, on "
               + (_counted(devices) if devices else "unrecorded hardware"))
    return Protocol(epochs=epochs, selection=selection, seeds=seeds_text, budget=_budget(runs_dir, suite),
                    compute=compute, code=_code(commits))


def _code(commits: Counter) -> str:
    """The commits the done runs were trained at. A cell's hash is its configuration, not the code, so
    a sweep resumed after a code change keeps the cells finished before it: the report says so."""
    if not commits:
        return "not recorded"
    text = "git " + _counted(commits)
    if len(commits) > 1:
        text += " (finished cells are never recomputed, so a code change reaches only the runs after it)"
    if any(c.endswith("-dirty") for c in commits):
        text += "; -dirty: uncommitted changes in the working tree"
    return text


def _budget(runs_dir: str | Path, suite: dict) -> str:
    """The tuned protocol's recorded search (chosen.json beside the cells), else the defaults."""
    records = [_read(p) for p in sorted((Path(runs_dir) / suite["name"]).glob("*/*/chosen.json"))]
    records = [r for r in records if r.get("budget")]
    if not records:
        return ("none: every strategy at its default settings (the same for all; `protocol=tuned` gives each the "
                "same search)")
    budgets = Counter(json.dumps(r["budget"], sort_keys=True) for r in records)
    b = records[0]["budget"]
    same = "the same in every cell, baseline included" if len(budgets) == 1 else "NOT the same in every cell"
    return (f"{b.get('trials')} {b.get('sampler', '')}-search trials per dataset × backbone × strategy at seed "
            f"{b.get('trial_seed')} ({same}); chosen by {records[0].get('rule', 'validation')}")
