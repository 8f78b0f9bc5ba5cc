"""What the MedMNIST reproduction protocols cost on this CPU, measured in one process.

One training step (forward, backward, Adam) of each protocol's network on random input of its
shape, on one CPU thread; the median of the timed steps after a warm-up, per sample. The cost of
a 100-epoch seed follows from the official training-split size. The ratios to the 2D ResNet-18
(28) step hold on any machine; the absolute minutes depend on the CPU and on what else runs.

    .venv/bin/python benchmarks/bench_medmnist_cost.py   # → benchmarks/results/medmnist_cost.json
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dkbench.backbones.registry import create_backbone

RESULTS = Path(__file__).resolve().parent / "results" / "medmnist_cost.json"
#: (label, backbone, spatial dims, side, batch, training images of the dataset it serves, dataset)
PROTOCOLS = [
    ("ResNet-18 (28), 2D 28 px", "resnet18_28", 2, 28, 128, 546, "breastmnist"),
    ("ResNet-18 (28), 2D 28 px, RGB", "resnet18_28", 2, 28, 128, 1080, "retinamnist"),
    ("ResNet-18 (standard stem), 2D 64 px", "resnet18", 2, 64, 128, 546, "breastmnist_64"),
    ("ResNet-18 (28) stem at 64 px (not used)", "resnet18_28", 2, 64, 128, 546, "breastmnist_64"),
    ("ResNet-18+3D (28), 28³", "resnet18_28", 3, 28, 32, 1335, "vesselmnist3d"),
    ("ResNet-18+3D (28), 28³", "resnet18_28", 3, 28, 32, 1188, "adrenalmnist3d"),
]
EPOCHS, WARMUP, TIMED = 100, 1, 3


def step_seconds_per_sample(arch: str, dims: int, side: int, batch: int, channels: int) -> float:
    torch.manual_seed(0)
    net = create_backbone(arch, in_chans=channels, spatial_dims=dims, img_size=side)
    head = torch.nn.LazyLinear(2)
    params = list(net.parameters())
    x = torch.randn(batch, channels, *([side] * dims))
    y = torch.randint(0, 2, (batch,))
    times = []
    for i in range(WARMUP + TIMED):
        began = time.perf_counter()
        features = net(x)
        features = features if torch.is_tensor(features) else features[0]
        loss = torch.nn.functional.cross_entropy(head(features.flatten(1)), y)
        if i == 0:
            optimiser = torch.optim.Adam(params + list(head.parameters()), 1e-3)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if i >= WARMUP:
            times.append(time.perf_counter() - began)
    return statistics.median(times) / batch


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for label, arch, dims, side, batch, n_train, dataset in PROTOCOLS:
        channels = 3 if dataset == "retinamnist" else 1
        per_sample = step_seconds_per_sample(arch, dims, side, batch, channels)
        rows.append({"protocol": label, "dataset": dataset, "backbone": arch, "input": f"{side}^{dims}",
                     "batch": batch, "train_images": n_train, "step_ms_per_sample": round(1000 * per_sample, 2),
                     "train_hours_per_seed_100_epochs": round(per_sample * n_train * EPOCHS / 3600, 2)})
        print(f"{label:<42} {dataset:<15} {1000 * per_sample:8.2f} ms/sample  "
              f"{rows[-1]['train_hours_per_seed_100_epochs']:7.2f} h/seed", flush=True)
    reference = rows[0]["step_ms_per_sample"]
    for row in rows:
        row["ratio_to_2d_28"] = round(row["step_ms_per_sample"] / reference, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "what": "one training step per sample (median of timed steps), 1 CPU thread; hours = training steps only "
                "(no validation / data loading) for 100 epochs of the official training split",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "rows": rows}, indent=2) + "\n")
    print(f"→ {RESULTS}")


if __name__ == "__main__":
    main()
