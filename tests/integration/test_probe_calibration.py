"""Drift check of the probe's calibration (issue 10; docs/results/probe_calibration.md).

The knowledge probe is only evidence while its lesion is readable by the suite's backbone at the
suite's budget (the ceiling) and its shortcut still fools the plain baseline (the floor). A change
to the generator, the backbone, the training loop or the defaults can silently break either, so
this trains the two real runs at the documented setting — probe.yaml / probe_clean.yaml as they
are, with the `knowledge_probe` suite's overrides for the probe — and fails when the ceiling falls
below 0.85 or the gap below 0.20 (looser than the calibration targets 0.90 / 0.65: one seed
spreads). Data seed 101 is a calibration seed: the benchmark's test split (data seed 0) is never
read. Ceiling = validation AUROC without the shortcut; floor = the shifted test split of the
same calibration seed. Two tinycnn runs, about 1-2 minutes on one core: marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dkbench.runner.compose import compose_config
from dkbench.runner.train import train

SUITE = Path(__file__).resolve().parents[2] / "configs/suite/knowledge_probe.yaml"
CALIBRATION_SEED = 101  # a calibration data seed, never the benchmark's 0
CEILING_MIN, GAP_MIN = 0.85, 0.20


@pytest.mark.slow
def test_probe_calibration_has_not_drifted(tmp_path):
    suite = OmegaConf.load(SUITE)
    assert suite.controls.probe.ceiling == "probe_clean"  # the suite measures what this checks
    budget = [*suite.overrides, *suite.per_dataset.probe]
    common = [*budget, "backbone=tinycnn", "strategy=baseline", f"seed={CALIBRATION_SEED}",
              f"dataset.options.seed={CALIBRATION_SEED}", "ui.progress_bar=false",
              f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]
    clean = train(compose_config(["dataset=probe_clean", *common]))
    shortcut = train(compose_config(["dataset=probe", *common]))
    ceiling, floor = clean["val/auroc"], shortcut["test/auroc"]
    message = f"ceiling (val AUROC, shortcut off) {ceiling:.3f}, floor (shifted test AUROC) {floor:.3f}"
    assert ceiling >= CEILING_MIN, f"probe lesion no longer readable: {message}"
    assert ceiling - floor >= GAP_MIN, f"shortcut gap collapsed: {message}"
