"""How long a bad command takes to be refused (issue 12: target < 3 s), each in a fresh process as
a user meets it: `dkbench train <bad setting>` until the one-line refusal and exit status 2.

The floor is `dkbench --help` (interpreter start + the CLI module); every refusal is reported in
seconds and as a multiple of that floor, the median of `--repeats` runs (alternating cases, so
machine drift affects all). Results: benchmarks/results/refusal.json.

    .venv/bin/python benchmarks/bench_refusal.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TINY = ["dataset=probe", "backbone=tinycnn", "ui.progress_bar=false"]

#: (case, arguments after `dkbench`, expected exit status)
CASES = [
    ("help (floor)", ["--help"], 0),
    ("run folder name with ..", ["train", *TINY, "dataset.name=../../x"], 2),
    ("zero epochs", ["train", *TINY, "trainer.max_epochs=0"], 2),
    ("two devices", ["train", *TINY, "trainer.devices=2"], 2),
    ("unknown dataset", ["train", "dataset=nosuchdataset"], 2),
    ("unknown strategy option", ["train", *TINY, "+strategy.options.no_such_option=1"], 2),
    ("data file missing", ["train", "dataset=breastmnist", "backbone=tinycnn", "paths.data_dir=/nonexistent"], 2),
    ("strategy the dataset cannot serve", ["train", "dataset=probe_3class", "backbone=tinycnn", "strategy=roi_input",
                                           "dataset.provides=[]"], 2),
    ("DenseNet at 28 px", ["train", "dataset=breastmnist", "backbone=densenet121", "paths.data_dir={data}"], 2),
    ("unknown suite (sweep)", ["sweep", "suite=nosuchsuite"], 2),
]


def fake_breastmnist(root: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 20), ("test", 20)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez(root / "medmnist" / "breastmnist.npz", **arrays)
    return root


def time_case(argv: list[str], expected: int, cwd: Path) -> float:
    env = {**os.environ, "DKBENCH_ROOT": str(cwd), "OMP_NUM_THREADS": "1"}
    env.pop("DKBENCH_TRACEBACK", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dkbench.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != expected or "Traceback" in proc.stderr:
        raise SystemExit(f"{argv}: exit {proc.returncode} (expected {expected})\n{proc.stderr[-1500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = fake_breastmnist(root / "data")
        times: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
        for _ in range(args.repeats):
            for name, argv, expected in CASES:
                times[name].append(time_case([a.format(data=data) for a in argv], expected, root))
        runs_written = (root / "runs").exists() and any(p.is_file() for p in (root / "runs").rglob("*"))
    floor = statistics.median(times["help (floor)"])
    rows = [{"case": name, "median_s": round(statistics.median(t), 2), "max_s": round(max(t), 2),
             "x_floor": round(statistics.median(t) / floor, 1)} for name, t in times.items()]
    result = {"target_s": 3.0, "repeats": args.repeats, "floor_s": round(floor, 2), "cases": rows,
              "all_under_target": all(r["median_s"] < 3.0 for r in rows), "run_files_written": runs_written,
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "refusal.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        print(f"{r['case']:<{width}}  {r['median_s']:5.2f} s  (max {r['max_s']:.2f}, {r['x_floor']}× --help)")
    print(f"all under {result['target_s']} s: {result['all_under_target']}; run files written: {runs_written}")


if __name__ == "__main__":
    main()
