"""``python -m dkbench.leaderboard RUNS_DIR SUITE.yaml OUT_DIR``: build a report, print the markdown.

SUITE.yaml holds the suite dict: name, datasets, backbones, strategies, seeds, baseline,
rank_metric, metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dkbench.leaderboard.report import build_report


def load_suite(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    from omegaconf import OmegaConf

    suite = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(suite, dict)
    return suite.get("suite", suite) if isinstance(suite.get("suite"), dict) else suite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dkbench.leaderboard", description=__doc__)
    parser.add_argument("runs_dir")
    parser.add_argument("suite", help="YAML or JSON file with the suite dict")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    result = build_report(args.runs_dir, load_suite(args.suite), args.out_dir)
    print(result["markdown"])


if __name__ == "__main__":
    main()
