"""Per-seed table of the MedMNIST v2 reproduction, read from its run folders only.

    .venv/bin/python scripts/summarize_repro.py [runs/repro_medmnist_v2] > docs/results/medmnist_v2.md
"""

import json
import statistics
import sys
from pathlib import Path

PUBLISHED = {"breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854), "retinamnist": (0.717, 0.524)}
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/repro_medmnist_v2")
print("| dataset | seed | test AUC | test ACC | best epoch (0-based) | wall time | train img/s | status |")
print("|---|---|---|---|---|---|---|---|")
by_dataset: dict[str, list[tuple[float, float]]] = {}
for run in sorted(root.glob("*/*/seed_*")):
    dataset, seed = run.parts[-3], run.name.removeprefix("seed_")
    metrics_file = run / "metrics.json"
    if not (run / "DONE").exists() or not metrics_file.exists():
        epochs = sum(1 for _ in (run / "csv" / "metrics.csv").open()) // 3 if (run / "csv/metrics.csv").exists() else 0
        print(f"| {dataset} | {seed} | – | – | – | – | – | unfinished (≈ epoch {epochs}) |")
        continue
    m = json.loads(metrics_file.read_text())
    by_dataset.setdefault(dataset, []).append((m["test/auroc"], m["test/acc"]))
    print(f"| {dataset} | {seed} | {m['test/auroc']:.4f} | {m['test/acc']:.4f} | {m['selection']['best_epoch']} | "
          f"{m['wall_time_s'] / 60:.1f} min | {m['train_images_per_s']:.1f} | done |")
print()
for dataset, scores in by_dataset.items():
    auc = [s[0] for s in scores]
    acc = [s[1] for s in scores]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else float("nan"))
    pub = PUBLISHED.get(dataset)
    if pub is None:  # e.g. breastmnist_64: MedMNIST v2 publishes 28-px results only
        print(f"**{dataset}** ({len(scores)} seeds): AUC {statistics.mean(auc):.3f} ± {sd(auc):.3f}; "
              f"ACC {statistics.mean(acc):.3f} ± {sd(acc):.3f} (no published number at this setting)")
        continue
    print(f"**{dataset}** ({len(scores)} seeds): AUC {statistics.mean(auc):.3f} ± {sd(auc):.3f} "
          f"(published {pub[0]:.3f}, Δ {statistics.mean(auc) - pub[0]:+.3f}); "
          f"ACC {statistics.mean(acc):.3f} ± {sd(acc):.3f} (published {pub[1]:.3f})")
