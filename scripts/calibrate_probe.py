"""Calibrate the knowledge probe: a ceiling (no shortcut) and a floor (shortcut) per setting.

Issue 10: the probe's lesion must be readable by the evidence suite's backbone at its budget
(ceiling: the shortcut-off baseline reaches AUROC >= 0.90) while the shortcut still fools the
baseline (floor: AUROC <= 0.65 on the shifted split). This script trains the real runs (`dkbench
train`, tinycnn, baseline, the suite's epochs) on *calibration* data seeds only (101, 102, 103;
the benchmark uses data seed 0) and reads

* the ceiling from the **validation** split of the shortcut-off runs (`probe_clean`), and
* the floor from the **test** split of the shortcut-on runs: that split is the shifted one
  (marker agreement `test_rate`), and it is the calibration seeds' own test split, generated
  from another data seed than the benchmark's, so no benchmark test image is looked at.

Grid (ordered; the rule walks it in this order): shortcut variant (A = the probe's original
0.9 / 0.5 agreement, first, because an unchanged shortcut is preferred; C = a marker that always
agrees in train/val and agrees in 25 % of test images) × lesion radius range (ascending, so
the smallest lesion that passes is chosen), all at signal 1.0 and 8 epochs. Ceiling runs do
not depend on the shortcut variant (the marker is off; its random draws happen either way), so
they are shared: 3 radii × 3 seeds ceilings + 2 × 3 × 3 floors = 27 runs.

Rule, fixed before the grid was run: the first setting in grid order whose mean ceiling over
the calibration seeds is >= 0.92 and whose mean floor is <= 0.62 (margins of 0.02 / 0.03 under
the issue's 0.90 / 0.65, for seed-to-seed spread). If none passes, nothing is chosen: the
script says so and names the setting with the largest mean ceiling - floor among those with
ceiling >= 0.90, as a fallback that fails the targets.

Outputs: `<out>.csv` (one row per run), `<out>_curve.csv` and `<out>.json` (per setting:
ceiling and floor mean, sd, n, the rule's verdict and the choice), `<out>.png` (the curve).
Resumable: finished runs are skipped by `dkbench train` itself (same config hash).

    PYTHONPATH=src .venv/bin/python scripts/calibrate_probe.py --runs-dir /tmp/calib_runs \\
        --out docs/results/probe_calibration --jobs 2 --second-job-after 19:00
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

SEEDS = (101, 102, 103)
EPOCHS = 8
SIGNAL = 1.0
RADII = ((4, 12), (6, 14), (8, 16))
SHORTCUTS = {"A": (0.9, 0.5), "C": (1.0, 0.25)}  # name: (train_rate (train and val), test_rate)
CEILING_MIN, FLOOR_MAX = 0.92, 0.62  # the rule's thresholds (issue: 0.90 / 0.65)
SUITE_NAME = "probe_calibration"


def run_overrides(radius: tuple[int, int], shortcut: str | None, seed: int, epochs: int) -> list[str]:
    """`dkbench train` overrides of one calibration run (shortcut None: the ceiling run)."""
    r_text = f"r{radius[0]}-{radius[1]}"
    common = [f"dataset.options.seed={seed}", f"seed={seed}", f"dataset.options.signal={SIGNAL}",
              f"dataset.options.radius=[{radius[0]},{radius[1]}]", f"trainer.max_epochs={epochs}",
              "backbone=tinycnn", "strategy=baseline", "threads=1", "keep_checkpoints=false",
              "ui.progress_bar=false", f"suite_name={SUITE_NAME}"]
    if shortcut is None:
        return ["dataset=probe_clean", *common, f"tag=@{r_text}"]
    train_rate, test_rate = SHORTCUTS[shortcut]
    return ["dataset=probe", *common, "dataset.options.shortcut.enabled=true",
            f"dataset.options.shortcut.train_rate={train_rate}", f"dataset.options.shortcut.test_rate={test_rate}",
            f"tag=@{r_text}_{shortcut}"]


def plan(seeds, epochs) -> list[dict]:
    jobs = []
    for radius in RADII:
        for shortcut in (None, *SHORTCUTS):
            for seed in seeds:
                jobs.append(dict(radius=radius, shortcut=shortcut, seed=seed,
                                 overrides=run_overrides(radius, shortcut, seed, epochs)))
    return jobs


def run_dir(runs_dir: Path, job: dict) -> Path:
    tag = next(o for o in job["overrides"] if o.startswith("tag=")).removeprefix("tag=")
    dataset = "probe_clean" if job["shortcut"] is None else "probe"
    return runs_dir / SUITE_NAME / dataset / f"tinycnn__baseline{tag}" / f"seed_{job['seed']}"


def train(job: dict, runs_dir: Path, log_dir: Path) -> None:
    cmd = [sys.executable, "-m", "dkbench.cli", "train", *job["overrides"], f"paths.runs_dir={runs_dir}"]
    log = log_dir / (run_dir(runs_dir, job).relative_to(runs_dir).as_posix().replace("/", "__") + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)


def run_all(jobs: list[dict], runs_dir: Path, n_jobs: int, second_after: str | None) -> None:
    """Train every job; workers beyond the first wait until `second_after` (HH:MM, UTC) when the
    machine is shared and a second process may only start later."""
    log_dir = runs_dir / "calibration_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = [j for j in jobs if not (run_dir(runs_dir, j) / "DONE").exists()]
    lock = threading.Lock()

    def worker(index: int) -> None:
        if index > 0 and second_after:
            hh, mm = (int(x) for x in second_after.split(":"))
            while dt.datetime.now(dt.timezone.utc).time() < dt.time(hh, mm):
                time.sleep(20)
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop(0)
            started = time.time()
            train(job, runs_dir, log_dir)
            print(f"[worker {index}] {run_dir(runs_dir, job).relative_to(runs_dir)}: {time.time() - started:.0f} s",
                  flush=True)

    with ThreadPoolExecutor(n_jobs) as pool:
        for f in [pool.submit(worker, i) for i in range(n_jobs)]:
            f.result()


def read_results(jobs: list[dict], runs_dir: Path) -> pd.DataFrame:
    rows = []
    for job in jobs:
        path = run_dir(runs_dir, job)
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "DONE").exists() else {}
        rows.append(dict(radius=f"{job['radius'][0]}-{job['radius'][1]}", shortcut=job["shortcut"] or "off",
                         seed=job["seed"], val_auroc=metrics.get("val/auroc", np.nan),
                         test_auroc=metrics.get("test/auroc", np.nan), done=bool(metrics), run_dir=str(path)))
    return pd.DataFrame(rows)


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (shortcut variant, radius): ceiling = val AUROC of the shortcut-off runs, floor = test
    AUROC of that variant's runs; mean, sd, n over the calibration seeds; in grid order."""
    rows = []
    for shortcut in SHORTCUTS:
        for radius in (f"{a}-{b}" for a, b in RADII):
            ceil = runs[(runs["shortcut"] == "off") & (runs["radius"] == radius)]["val_auroc"].dropna()
            ceil_test = runs[(runs["shortcut"] == "off") & (runs["radius"] == radius)]["test_auroc"].dropna()
            flo = runs[(runs["shortcut"] == shortcut) & (runs["radius"] == radius)]["test_auroc"].dropna()
            flo_val = runs[(runs["shortcut"] == shortcut) & (runs["radius"] == radius)]["val_auroc"].dropna()
            train_rate, test_rate = SHORTCUTS[shortcut]
            rows.append(dict(
                shortcut=shortcut, train_rate=train_rate, test_rate=test_rate, radius=radius, signal=SIGNAL,
                ceiling_mean=ceil.mean(), ceiling_sd=ceil.std(ddof=1), ceiling_n=len(ceil),
                floor_mean=flo.mean(), floor_sd=flo.std(ddof=1), floor_n=len(flo),
                gap=ceil.mean() - flo.mean(), clean_test_mean=ceil_test.mean(), shortcut_val_mean=flo_val.mean(),
                passes=bool(ceil.mean() >= CEILING_MIN and flo.mean() <= FLOOR_MAX)))
    return pd.DataFrame(rows)


def choose(cur: pd.DataFrame) -> dict:
    """The rule (module docstring): first passing setting in grid order, else a flagged fallback."""
    passing = cur[cur["passes"]]
    if len(passing):
        return {"chosen": passing.iloc[0].to_dict(), "meets_rule": True}
    ok = cur[cur["ceiling_mean"] >= 0.90]
    pool = ok if len(ok) else cur
    return {"chosen": pool.loc[pool["gap"].idxmax()].to_dict() if len(pool) else None, "meets_rule": False}


def plot(cur: pd.DataFrame, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    x = np.arange(len(RADII))
    labels = [f"{a}-{b}" for a, b in RADII]
    first = cur[cur["shortcut"] == next(iter(SHORTCUTS))]
    ax.errorbar(x, first["ceiling_mean"], yerr=first["ceiling_sd"], marker="o", color="k", capsize=3,
                label="ceiling: shortcut off, val AUROC")
    for shortcut, colour in zip(SHORTCUTS, ("tab:red", "tab:blue"), strict=True):
        sub = cur[cur["shortcut"] == shortcut]
        tr, te = SHORTCUTS[shortcut]
        ax.errorbar(x, sub["floor_mean"], yerr=sub["floor_sd"], marker="s", color=colour, capsize=3,
                    label=f"floor: shortcut {shortcut} ({tr:g}/{te:g}), shifted test AUROC")
    ax.axhline(CEILING_MIN, color="k", ls=":", lw=0.8)
    ax.axhline(FLOOR_MAX, color="grey", ls=":", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set_xlabel(f"lesion radius range, px at 64 px (signal {SIGNAL:g}, tinycnn, {EPOCHS} epochs)")
    ax.set_ylabel("AUROC (mean ± sd over calibration seeds)")
    ax.set_ylim(0.2, 1.0)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_title("Probe calibration (data seeds 101-103, never the benchmark's seed 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/probe_calibration"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--second-job-after", default=None, help="HH:MM UTC before which only one run trains")
    ap.add_argument("--report-only", action="store_true", help="read finished runs, train nothing")
    args = ap.parse_args(argv)
    jobs = plan(SEEDS, EPOCHS)
    if not args.report_only:
        run_all(jobs, args.runs_dir.resolve(), args.jobs, args.second_job_after)
    runs = read_results(jobs, args.runs_dir.resolve())
    cur = curve(runs)
    verdict = choose(cur)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs.drop(columns=["run_dir"]).to_csv(args.out.with_suffix(".csv"), index=False)
    cur.to_csv(args.out.parent / f"{args.out.name}_curve.csv", index=False)
    payload = {"rule": f"first in grid order with mean ceiling >= {CEILING_MIN} and mean floor <= {FLOOR_MAX}",
               "seeds": list(SEEDS), "epochs": EPOCHS, "signal": SIGNAL, "runs_done": int(runs["done"].sum()),
               "runs_planned": len(runs), "curve": cur.to_dict(orient="records"), **verdict}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float))
    plot(cur, args.out.with_suffix(".png"))
    pd.set_option("display.width", 200)
    print(cur.round(3).to_string(index=False))
    c = verdict["chosen"]
    if c is None:
        print("no run finished")
    else:
        word = "chosen by the rule" if verdict["meets_rule"] else "NO setting meets the rule; fallback (fails)"
        print(f"{word}: shortcut {c['shortcut']} (train/val {c['train_rate']:g}, test {c['test_rate']:g}), "
              f"radius {c['radius']}, signal {c['signal']:g}: ceiling {c['ceiling_mean']:.3f} "
              f"(n={c['ceiling_n']}), floor {c['floor_mean']:.3f} (n={c['floor_n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
