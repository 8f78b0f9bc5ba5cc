"""Regenerate src/dkbench/data/medmnist_info.json from the `medmnist` package's INFO table.

dkbench vendors the table (URLs, MD5s, tasks, labels) so that reading and downloading the
official files needs no `medmnist` install (it drags in torchvision, see STACK.md).
Run: `.venv/bin/python scripts/vendor_medmnist_info.py` after `pip install --no-deps medmnist`.
"""

import json
from pathlib import Path

from medmnist import INFO

KEEP = ("python_class", "url", "MD5", "url_64", "MD5_64", "url_128", "MD5_128", "url_224",
        "MD5_224", "task", "label", "n_channels", "n_samples", "license")

out = {flag: {k: info[k] for k in KEEP if k in info} for flag, info in INFO.items()}
path = Path(__file__).resolve().parents[1] / "src/dkbench/data/medmnist_info.json"
path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print(f"wrote {len(out)} flags to {path}")
