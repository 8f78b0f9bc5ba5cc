"""Training throughput of dkbench vs a plain PyTorch loop, in one process (goal: ratio ≥ 0.95).

Both train the MedMNIST v2 ResNet-18(28) on BreastMNIST-sized data (546 images, 1×28×28,
batch 128, Adam) for the same epochs; the first epoch of each is a warm-up and is not timed.
The real BreastMNIST file is used when DKBENCH_DATA holds it, else random data of that size.
Runs alternate (plain, dkbench, plain, dkbench) so drift of the machine affects both.

    .venv/bin/python benchmarks/bench_throughput.py [--epochs 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dkbench.backbones import create_backbone
from dkbench.runner.compose import compose_config
from dkbench.runner.train import train

RESULTS = Path(__file__).parent / "results"


def fake_breastmnist(root: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 546), ("val", 78), ("test", 156)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez(root / "medmnist" / "breastmnist.npz", **arrays)
    return root


def plain_loop(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int) -> float:
    """The reference: tensors in memory, shuffled index batches, forward/backward/step."""
    torch.manual_seed(0)
    model = create_backbone("resnet18_28", in_chans=1, img_size=28)
    head = torch.nn.Linear(model.num_features, 2)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x_all = torch.from_numpy(images)[:, None]
    y_all = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    timed_images, timed_seconds = 0, 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(x_all))
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x = (x_all[idx].float() / 255 - 0.5) / 0.5
            loss = F.cross_entropy(head(model(x)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch > 0:
            timed_images += len(perm)
            timed_seconds += time.perf_counter() - start
    return timed_images / timed_seconds


def dkbench_run(data_dir: Path, runs_dir: Path, epochs: int, tag: int | str, overrides: tuple[str, ...] = ()) -> float:
    """Training img/s of one dkbench run (`overrides`: e.g. a trainer preset)."""
    cfg = compose_config([
        "experiment=medmnist_v2_resnet18_28", "dataset=breastmnist", f"trainer.max_epochs={epochs}",
        f"paths.data_dir={data_dir}", f"paths.runs_dir={runs_dir}", f"suite_name=bench{tag}",
        "ui.progress_bar=false", "trainer.limit_val_batches=0", "keep_checkpoints=false",
        "monitor.metric=train/loss", "monitor.mode=min", *overrides,
    ])
    return float(train(cfg)["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import os

    shared = Path(os.environ.get("DKBENCH_DATA", "")) / "medmnist" / "breastmnist.npz"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_dir = shared.parents[1] if shared.exists() else fake_breastmnist(tmp_path / "data")
        with np.load(data_dir / "medmnist" / "breastmnist.npz") as npz:
            images, labels = npz["train_images"], npz["train_labels"]
        plain, ours = [], []
        for r in range(args.repeats):
            plain.append(plain_loop(images, labels, args.epochs, 128))
            ours.append(dkbench_run(data_dir, tmp_path / "runs", args.epochs, r))
            print(f"repeat {r}: plain {plain[-1]:.1f} img/s, dkbench {ours[-1]:.1f} img/s")
    result = {
        "benchmark": "resnet18_28 on BreastMNIST-sized data, batch 128, Adam; warm-up epoch excluded",
        "data": "real breastmnist.npz" if shared.exists() else "random, BreastMNIST-sized",
        "epochs": args.epochs, "repeats": args.repeats,
        "plain_images_per_s": [round(v, 2) for v in plain],
        "dkbench_images_per_s": [round(v, 2) for v in ours],
        "ratio_median": round(float(np.median(ours) / np.median(plain)), 3),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "host": platform.node(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"throughput_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"ratio dkbench / plain = {result['ratio_median']} (goal ≥ 0.95); written to {out}")


if __name__ == "__main__":
    main()
