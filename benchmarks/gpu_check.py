"""`make gpu-check`: every GPU check of the project in one call (issue 16), written as JSON.

GPU time is scarce (about a quarter of an hour a session, start-up included), so one call must
do everything and leave time to rerun it. Four sections, each independent (one failing does not
stop the others; `--sections` reruns a subset):

  throughput  (a) ResNet-18(28) training img/s through dkbench vs a plain PyTorch loop on the
              same device, same data, same precision / memory format (ratio; goal ≥ 0.9)
  packing     (b) aggregate training img/s with 1, 2, 4, 8 runs packed on one device through a
              real sweep (`hydra/launcher=gpu_pack`; goal ≥ 25,000 img/s on one H100)
  demo        (c) every classification and segmentation strategy for one short run on the device
              (a device bug in any strategy shows as a failed cell with its error)
  medmnist    (d) the 100-epoch MedMNIST v2 protocol on BreastMNIST, PneumoniaMNIST, RetinaMNIST:
              wall time and test AUC / ACC (goal: BreastMNIST under 60 s)
  medmnist3d  (e) opt-in (`--sections medmnist3d --section-timeout 540`, a call of its own): the
              3D protocol (ResNet-18+3D at 28³, 100 epochs) on VesselMNIST3D and AdrenalMNIST3D,
              one seed each: ≈ 22 h a seed on one CPU core, so the GPU is where it can run

    python benchmarks/gpu_check.py                 # on a GPU machine → benchmarks/results/gpu_*.json
    python benchmarks/gpu_check.py --small         # the same path on CPU in about a minute (tests)

Without CUDA the results go to runs/gpu_check_cpu/ (never over the committed GPU results) unless
`--out` says otherwise. Sweeps run as subprocesses of the real CLI, as a user would start them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("throughput", "packing", "demo", "medmnist", "medmnist3d")
DEFAULT_SECTIONS = SECTIONS[:4]  # medmnist3d needs a call of its own (≈ 5–8 min on one H100, estimated)
#: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023), Table 3, ResNet-18 (28): (AUC, ACC).
PAPER_RESNET18_28 = {"breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854),
                     "retinamnist": (0.717, 0.524)}
#: ibid., Table 4, ResNet-18+3D: (AUC, ACC) as recalled from the paper, not re-verified offline
PAPER_RESNET18_3D = {"vesselmnist3d": (0.874, 0.877), "adrenalmnist3d": (0.827, 0.721)}


# --- helpers ---------------------------------------------------------------------------------
def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def environment() -> dict[str, Any]:
    return {"device": device_name(), "cuda_devices": torch.cuda.device_count(), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M")}


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Atomic, so an interrupted check never leaves half a file beside committed results."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**payload, "environment": environment()}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def dkbench_cli(args: list[str], env: dict[str, str], timeout: float, log: Path) -> int:
    """One `dkbench …` command as a subprocess (output appended to `log`); returns its exit code."""
    cmd = [sys.executable, "-m", "dkbench.cli", *args]
    with log.open("a") as fh:
        fh.write(f"\n$ dkbench {' '.join(args)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n[gpu_check] timed out after {timeout:.0f} s\n")
            return 124


def run_folders(runs_dir: Path, suite: str) -> list[dict[str, Any]]:
    """Status, metrics and error of every run folder of a suite (what the leaderboard reads)."""
    rows = []
    # the sections' command-line settings name the suite folder (`<suite>@...`, run_folder.variant_suffix)
    for status_file in sorted(runs_dir.glob(f"{suite}*/*/*/seed_*/status.json")):
        folder = status_file.parent
        status = json.loads(status_file.read_text())
        row = {"cell": str(folder.relative_to(folder.parents[2])), "status": status.get("status"),
               "error": status.get("error") or status.get("reason")}
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():
            row["metrics"] = json.loads(metrics_file.read_text())
        rows.append(row)
    return rows


def accelerator_overrides(cuda: bool) -> list[str]:
    return ["trainer=gpu"] if cuda else []


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- (a) dkbench vs plain loop ---------------------------------------------------------------
def training_images(data_dir: Path, small: bool) -> tuple[np.ndarray, np.ndarray, str]:
    path = data_dir / "medmnist" / "pneumoniamnist.npz"
    if path.exists() and not small:
        with np.load(path) as npz:
            return npz["train_images"], npz["train_labels"].reshape(-1), "real pneumoniamnist.npz (4,708 train)"
    rng = np.random.default_rng(0)
    n = 128 if small else 4708
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 2, n), f"random, {n} images"


def plain_loop(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int, fast: bool) -> float:
    """The reference: uint8 tensors resident on the device, shuffled on the device, normalised
    there, forward / backward / Adam; bf16 autocast + channels_last when `fast` (what the
    `trainer=gpu` preset does), so the comparison measures the framework, not the settings."""
    from dkbench.backbones import create_backbone

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    backbone = create_backbone("resnet18_28", in_chans=1, img_size=28)
    model = torch.nn.Sequential()
    model.add_module("backbone", backbone)
    head = torch.nn.Linear(backbone.num_features, 2)
    backbone.to(device)
    head.to(device)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    backbone.to(memory_format=memory_format)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    x_all = torch.from_numpy(images)[:, None].to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    timed_images, timed_seconds = 0, 0.0
    for epoch in range(epochs):
        sync()
        start = time.perf_counter()
        perm = torch.randperm(len(x_all), device=device)
        for i in range(0, len(perm), batch):
            idx = perm[i: i + batch]
            x = ((x_all.index_select(0, idx).float() / 255 - 0.5) / 0.5).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
                logits = head(backbone.pool(backbone.forward_features(x)))
            loss = F.cross_entropy(logits.float(), y_all.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        if epoch > 0:  # the first epoch is a warm-up (allocator, cuDNN autotune)
            timed_images += len(perm)
            timed_seconds += time.perf_counter() - start
    return timed_images / timed_seconds


def dkbench_once(data_dir: Path, runs_dir: Path, epochs: int, tag: str, fast: bool, small: bool) -> float:
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import train

    overrides = [
        "experiment=medmnist_v2_resnet18_28", "dataset=pneumoniamnist", f"trainer.max_epochs={epochs}",
        f"paths.data_dir={data_dir}", f"paths.runs_dir={runs_dir}", f"suite_name=throughput_{tag}",
        "ui.progress_bar=false", "trainer.limit_val_batches=0", "keep_checkpoints=false",
        "monitor.metric=train/loss", "monitor.mode=min",
    ]
    if fast and torch.cuda.is_available():
        overrides.append("trainer=gpu")
    cfg = compose_config(overrides)
    return float(train(cfg)["train_images_per_s"])


def section_throughput(args: argparse.Namespace, out: Path, log: Path) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    epochs, repeats = (2, 1) if args.small else (6, 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        images, labels, source = training_images(args.data, args.small)
        data_dir = args.data
        if not (args.data / "medmnist" / "pneumoniamnist.npz").exists() or args.small:
            data_dir = tmp_path / "data"
            (data_dir / "medmnist").mkdir(parents=True)
            n_val = 64
            np.savez(data_dir / "medmnist" / "pneumoniamnist.npz", train_images=images,
                     train_labels=labels[:, None], val_images=images[:n_val], val_labels=labels[:n_val, None],
                     test_images=images[:n_val], test_labels=labels[:n_val, None])
        plain, ours = [], []
        for r in range(repeats):  # alternated, so drift of the machine affects both
            plain.append(plain_loop(images, labels, epochs, 128, fast=cuda))
            ours.append(dkbench_once(data_dir, tmp_path / "runs", epochs, f"r{r}", fast=True, small=args.small))
            print(f"  throughput repeat {r}: plain {plain[-1]:.0f} img/s, dkbench {ours[-1]:.0f} img/s", flush=True)
        fp32 = dkbench_once(data_dir, tmp_path / "runs", epochs, "fp32", fast=False, small=args.small) if cuda else None
    result = {
        "what": "ResNet-18(28) training img/s, batch 128, Adam; warm-up epoch excluded; device synchronised "
                "around each timed epoch; plain loop = uint8 data on the device, bf16 autocast + channels_last "
                "on CUDA (the trainer=gpu preset's settings)",
        "data": source, "epochs": epochs, "repeats": repeats,
        "plain_images_per_s": [round(v, 1) for v in plain],
        "dkbench_images_per_s": [round(v, 1) for v in ours],
        "ratio_dkbench_over_plain": round(float(np.median(ours) / np.median(plain)), 3),
        "goal": "ratio >= 0.9",
    }
    if fp32 is not None:
        result["dkbench_fp32_default_trainer_images_per_s"] = round(fp32, 1)
        result["speedup_gpu_preset_over_fp32"] = round(float(np.median(ours)) / fp32, 2)
    return result


# --- (b) packing ---------------------------------------------------------------------------
def section_packing(args: argparse.Namespace, out: Path, log: Path, env: dict[str, str]) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    ks = (1, 2) if args.small else (1, 2, 4, 8)
    epochs = 1 if args.small else 6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            runs_dir = Path(tmp) / f"k{k}"
            seeds = ",".join(str(s) for s in range(k))
            extra = [f"paths.runs_dir={runs_dir}", "ui.progress_bar=false", f"suite.seeds=[{seeds}]",
                     f"trainer.max_epochs={epochs}", "hydra/launcher=gpu_pack", f"placement.runs_per_device={k}",
                     f"hydra.launcher.n_jobs={k}", *accelerator_overrides(cuda)]
            if args.small:
                extra += ["dataset=probe", "backbone=tinycnn", "dataset.options.n_train=128",
                          "dataset.options.n_val=32", "dataset.options.n_test=32"]
            began = time.time()
            code = dkbench_cli(["sweep", "suite=gpu_pack", *extra], env, args.section_timeout, log)
            wall = time.time() - began
            cells = [c for c in run_folders(runs_dir, "gpu_pack") if "metrics" in c]
            rates = [c["metrics"].get("train_images_per_s") for c in cells]
            starts = [c["metrics"].get("started_at") for c in cells]
            ends = [c["metrics"].get("finished_at") for c in cells]
            durations = [e - s for s, e in zip(starts, ends)] if cells else []
            overlap = (min(ends) - max(starts)) / float(np.mean(durations)) if len(cells) > 1 else 1.0
            row = {"runs": k, "exit_code": code, "runs_done": len(cells), "sweep_wall_s": round(wall, 1),
                   "per_run_images_per_s": [round(r, 1) for r in rates if r is not None],
                   "aggregate_images_per_s": round(float(np.nansum([r for r in rates if r is not None])), 1),
                   "overlap_of_run_windows": round(overlap, 3),
                   "devices_seen": sorted({str((c["metrics"].get("placement") or {}).get("device")) for c in cells})}
            rows.append(row)
            print(f"  packing k={k}: aggregate {row['aggregate_images_per_s']:.0f} img/s "
                  f"({len(cells)}/{k} runs done, overlap {overlap:.2f})", flush=True)
    best = max((r["aggregate_images_per_s"] for r in rows), default=0.0)
    return {"what": "k runs of ResNet-18(28) on PneumoniaMNIST (seeds 0..k-1) packed on one device by a real sweep "
                    "(hydra/launcher=gpu_pack, placement.runs_per_device=k); aggregate = sum of each run's "
                    "synchronised steady-state img/s; overlap = shared time of all run windows / mean run time "
                    "(1 = the runs trained together the whole time)",
            "epochs": epochs, "rows": rows, "best_aggregate_images_per_s": best,
            "goal": "aggregate >= 25,000 img/s on one H100"}


# --- (c) every strategy on the device --------------------------------------------------------
def section_demo(args: argparse.Namespace, out: Path, log: Path, env: dict[str, str]) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    suites = {"gpu_check_cls": [], "gpu_check_seg": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        for suite in suites:
            extra = [f"paths.runs_dir={runs_dir}", "ui.progress_bar=false", *accelerator_overrides(cuda)]
            if cuda:  # several short runs at once: the device is far from full with one
                extra += ["hydra/launcher=gpu_pack", "placement.runs_per_device=4", "hydra.launcher.n_jobs=4"]
            if args.small:  # the CPU rehearsal: a few strategies, tiny data
                picks = "[baseline,roi_input]" if suite.endswith("cls") else "[baseline,anatomical_postprocess]"
                extra += [f"suite.strategies={picks}", "suite.datasets=[probe]" if suite.endswith("cls") else
                          "suite.datasets=[probe_seg]", "dataset.options.n_train=64", "dataset.options.n_val=32",
                          "dataset.options.n_test=32"]
            began = time.time()
            code = dkbench_cli(["sweep", f"suite={suite}", *extra], env, args.section_timeout, log)
            rows = run_folders(runs_dir, suite)
            suites[suite] = {"exit_code": code, "wall_s": round(time.time() - began, 1), "cells": [
                {"cell": r["cell"], "status": r["status"], "error": r["error"],
                 "wall_time_s": (r.get("metrics") or {}).get("wall_time_s"),
                 **{k: round(v, 4) for k, v in (r.get("metrics") or {}).items()
                    if k in ("test/auroc", "test/acc", "test/dice", "test/hd95")}} for r in rows]}
            failed = [c["cell"] for c in suites[suite]["cells"] if c["status"] == "failed"]
            print(f"  demo {suite}: {len(rows)} cells, failed: {failed or 'none'}", flush=True)
    counts: dict[str, int] = {}
    for s in suites.values():
        for c in s["cells"]:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
    return {"what": "every strategy × task for one 1-epoch run on the device (not evidence: a device check)",
            "counts": counts, "suites": suites}


# --- (d) MedMNIST v2 protocol --------------------------------------------------------------
def _medmnist_sweep(args: argparse.Namespace, log: Path, env: dict[str, str], suite: str, small: list[str],
                    paper: dict[str, tuple[float, float]], always: tuple[str, ...] = ()) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        extra = [f"paths.runs_dir={runs_dir}", "ui.progress_bar=false", *accelerator_overrides(cuda), *always]
        if args.small:
            extra += small
        began = time.time()
        code = dkbench_cli(["sweep", f"suite={suite}", *extra], env, args.section_timeout, log)
        wall = time.time() - began
        rows = []
        for r in run_folders(runs_dir, suite):
            m = r.get("metrics") or {}
            dataset = r["cell"].split("/")[0]
            rows.append({"dataset": dataset, "status": r["status"], "error": r["error"],
                         "epochs": m.get("epochs_trained"), "wall_time_s": m.get("wall_time_s"),
                         "train_images_per_s": m.get("train_images_per_s"),
                         "test_auc": m.get("test/auroc"), "test_acc": m.get("test/acc"),
                         "best_epoch": (m.get("selection") or {}).get("best_epoch"),
                         "paper_auc_acc": paper.get(dataset)})
            print(f"  {suite} {dataset}: {r['status']} wall {m.get('wall_time_s')} s, "
                  f"AUC {m.get('test/auroc')}, ACC {m.get('test/acc')}", flush=True)
    return {"exit_code": code, "sweep_wall_s": round(wall, 1), "rows": rows}


def section_medmnist(args: argparse.Namespace, out: Path, log: Path, env: dict[str, str]) -> dict[str, Any]:
    small = ["suite.datasets=[breastmnist]", "trainer.max_epochs=2", "backbone=tinycnn"]
    return {"what": "MedMNIST v2 protocol (experiment=medmnist_v2_resnet18_28), 1 seed, runs one after another in "
                    "one sweep process; wall_time_s = the run's own wall time (data, 100 epochs with validation, test)",
            **_medmnist_sweep(args, log, env, "gpu_medmnist_v2", small, PAPER_RESNET18_28),
            "goal": "BreastMNIST 100 epochs under 60 s on one H100",
            "paper": "Yang et al. 2023 (MedMNIST v2), ResNet-18 (28), test AUC / ACC"}


# --- (e) MedMNIST v2 3D protocol (opt-in) -----------------------------------------------------
def section_medmnist3d(args: argparse.Namespace, out: Path, log: Path, env: dict[str, str]) -> dict[str, Any]:
    small = ["suite.datasets=[vesselmnist3d]", "trainer.max_epochs=1", "backbone=tinycnn"]
    return {"what": "MedMNIST v2 3D protocol (suite repro_medmnist_3d, experiment=medmnist_v2_resnet18_28_3d), "
                    "seed 0 on each dataset, one after another",
            **_medmnist_sweep(args, log, env, "repro_medmnist_3d", small, PAPER_RESNET18_3D,
                              always=("suite.seeds=[0]", "keep_checkpoints=false")),
            "paper": "Yang et al. 2023 (MedMNIST v2), ResNet-18+3D, test AUC / ACC (recalled, not re-verified offline)"}


# --- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: the CPU rehearsal the tests run")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated subset of {SECTIONS} (default: {', '.join(DEFAULT_SECTIONS)})")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_*.json (default: "
                        "benchmarks/results on CUDA, runs/gpu_check_cpu otherwise)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("DKBENCH_DATA", REPO.parent / "shared" / "datasets")))
    parser.add_argument("--section-timeout", type=float, default=240.0, help="seconds per sweep command")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    out = args.out or (REPO / "benchmarks" / "results" if torch.cuda.is_available() else REPO / "runs" / "gpu_check_cpu")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    env = {**os.environ, "DKBENCH_DATA": str(args.data), "PYTHONUNBUFFERED": "1"}
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    print(f"gpu_check on {device_name()}: sections {sections}, results → {out}", flush=True)
    summary = {}
    runners = {"throughput": lambda: section_throughput(args, out, log),
               "packing": lambda: section_packing(args, out, log, env),
               "demo": lambda: section_demo(args, out, log, env),
               "medmnist": lambda: section_medmnist(args, out, log, env),
               "medmnist3d": lambda: section_medmnist3d(args, out, log, env)}
    for name in sections:
        began = time.time()
        try:
            result = {"ok": True, **runners[name]()}
        except Exception as err:  # one broken section must not cost the others' device time
            result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(f"  {name} FAILED: {result['error']}", flush=True)
        result["section_wall_s"] = round(time.time() - began, 1)
        summary[name] = write_json(out, name, {"section": name, "small": args.small, **result})
        print(f"[{name}] {'ok' if result['ok'] else 'FAILED'} in {result['section_wall_s']} s → {summary[name]}",
              flush=True)
    return 0 if all(json.loads(p.read_text())["ok"] for p in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
