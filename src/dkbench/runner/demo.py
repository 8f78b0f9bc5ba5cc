"""`dkbench demo`: the README's main job, offline, on the embedded probe (+ BreastMNIST if present).

Runs in one process (the stack's import cost is paid once) and prints where the run folders
are and their test metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dkbench.runner.compose import compose_config
from dkbench.runner.train import train

DEMO_RUNS = (
    ("probe (synthetic, embedded)", ["dataset=probe", "backbone=tinycnn", "trainer.max_epochs=3"], None),
    (
        "BreastMNIST (MedMNIST v2 protocol, 3 epochs)",
        ["experiment=medmnist_v2_resnet18_28", "dataset=breastmnist", "trainer.max_epochs=3"],
        "medmnist/breastmnist.npz",
    ),
)


def run_demo(extra_overrides: list[str] | None = None) -> list[tuple[str, Path, dict]]:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    done = []
    for title, overrides, needs in DEMO_RUNS:
        cfg = compose_config(["suite_name=demo", *overrides, *(extra_overrides or [])])
        if needs and not (Path(cfg.paths.data_dir) / needs).exists():
            print(f"skipping {title}: {Path(cfg.paths.data_dir) / needs} not found (set DKBENCH_DATA)")
            continue
        print(f"== {title}")
        metrics = train(cfg)
        done.append((title, Path(cfg.paths.run_dir), metrics))
    print("\nrun folders:")
    for title, path, metrics in done:
        scores = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("test/") and k != "test/loss")
        print(f"  {path}  ({title}: {scores})")
    return done
