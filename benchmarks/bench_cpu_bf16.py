"""The fast CPU path: dkbench training img/s in float32 vs `trainer=cpu_bf16` (bf16 autocast +
channels_last), in one process, alternating (fp32, bf16, fp32, bf16, …) so drift of the machine
affects both. ResNet-18(28) on BreastMNIST (real file under DKBENCH_DATA, else random data of
its size), batch 128, Adam; the first epoch of each run is a warm-up and is not timed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_cpu_bf16.py [--epochs 4] [--repeats 3] [--threads 2]

Writes benchmarks/results/cpu_bf16.json with the speed-up (bf16 / fp32): the median of the
per-pair ratios and the ratio of the best runs (a shared machine's load shows as outliers). The speed-up
needs bf16 units (AMX or AVX-512 BF16, listed under `cpu_flags`); without them bf16 is emulated
and slower than float32 — keep the float32 default there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_throughput import RESULTS, dkbench_run, fake_breastmnist


def bf16_cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f in ("amx_bf16", "amx_tile", "avx512_bf16"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="alternated fp32 / bf16 pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each run")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be ≥ 2: the first epoch is a warm-up and is not timed")

    shared = Path(os.environ.get("DKBENCH_DATA", "")) / "medmnist" / "breastmnist.npz"
    common = (f"threads={args.threads}", "trainer.accelerator=cpu")
    fp32, bf16 = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = shared.parents[1] if shared.exists() else fake_breastmnist(tmp_path / "data")
        for r in range(args.repeats):
            fp32.append(dkbench_run(data_dir, tmp_path / "runs", args.epochs, f"fp32_{r}", common))
            bf16.append(dkbench_run(data_dir, tmp_path / "runs", args.epochs, f"bf16_{r}", (*common, "trainer=cpu_bf16")))
            print(f"repeat {r}: fp32 {fp32[-1]:.1f} img/s, cpu_bf16 {bf16[-1]:.1f} img/s", flush=True)
    pairs = [b / f for f, b in zip(fp32, bf16, strict=True)]
    result = {
        "benchmark": "dkbench resnet18_28 training img/s on BreastMNIST, batch 128, Adam: float32 vs trainer=cpu_bf16 "
                     "(bf16-mixed autocast + channels_last); alternating runs, warm-up epoch excluded",
        "data": "real breastmnist.npz" if shared.exists() else "random, BreastMNIST-sized",
        "epochs": args.epochs, "repeats": args.repeats, "threads": args.threads,
        "fp32_images_per_s": [round(v, 2) for v in fp32],
        "cpu_bf16_images_per_s": [round(v, 2) for v in bf16],
        "speedup_per_pair": [round(v, 3) for v in pairs],
        # the median of the per-pair ratios (each pair ran back to back, under the same load) and
        # best of each (the run least disturbed by other work on the machine)
        "speedup_median": round(float(np.median(pairs)), 3),
        "speedup_best_of": round(max(bf16) / max(fp32), 3),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(), "cpu_flags": bf16_cpu_flags(),
        "host": platform.node(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cpu_bf16.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"speed-up cpu_bf16 / fp32 = {result['speedup_median']} (median of pairs), "
          f"{result['speedup_best_of']} (best of each); written to {out}")


if __name__ == "__main__":
    main()
