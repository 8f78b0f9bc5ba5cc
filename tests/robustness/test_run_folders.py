"""Run folders that lie: a DONE over a corrupt result is redone, not trusted or skipped forever."""

from __future__ import annotations

import json

import pytest

from dkbench.runner.run_folder import RunFolder


@pytest.mark.parametrize("name,garbage", [("metrics.json", "{truncated"), ("metrics.json", "[1, 2]"),
                                          ("config.yaml", "key: [unclosed"), ("config.yaml", "just a string"),
                                          ("DONE", "{not json")])
def test_done_over_a_corrupt_result_is_redone(tiny_run, name, garbage):
    metrics, run = tiny_run()
    (run / name).write_text(garbage)
    folder = RunFolder(run)
    assert folder.done_hash is None  # the sweep planner lists it as pending, the report as not done
    again, _ = tiny_run()
    assert folder.done_hash is not None and json.loads((run / "metrics.json").read_text()) == again
    assert again["test/auroc"] == pytest.approx(metrics["test/auroc"])  # same config, same result
