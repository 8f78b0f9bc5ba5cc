"""Run identity on the command line: settings that change results name their own folder
(`run_folder.variant_suffix`), so a variant never supersedes the default run (issue 15, item 5)."""

from __future__ import annotations

import json

import pytest

from dkbench.runner.compose import compose_config
from dkbench.runner.run_folder import RunFolder, adopt_unsuffixed, config_hash, variant_settings, variant_suffix

GROUPS = ["backbone", "data", "dataset", "experiment", "model", "strategy", "suite", "trainer"]


def test_only_settings_that_change_results_count():
    args = ["dataset=ph2", "backbone=tinycnn", "seed=3", "tag=@x", "suite=smoke", "suite.datasets=[probe]",
            "paths.runs_dir=/x", "ui.progress_bar=false", "threads=1", "keep_checkpoints=false", "protocol=tuned",
            "hydra.launcher.n_jobs=2", "hydra/launcher=joblib", "-m", "trainer=cpu",
            "dataset.resize=32", "+strategy.options.weight=2", "~model.scheduler", "malformed"]
    assert variant_settings(args, GROUPS) == [
        ("dataset.resize", "32"), ("model.scheduler", "~"), ("strategy.options.weight", "2")]
    assert variant_suffix(["dataset=ph2", "seed=1", "threads=2"], GROUPS) == ""


def test_suffix_is_readable_when_short_and_order_free():
    assert variant_suffix(["dataset.resize=32"], GROUPS) == "@dataset.resize:32"
    both = variant_suffix(["trainer.max_epochs=2", "dataset.resize=32"], GROUPS)
    assert both == "@dataset.resize:32+trainer.max_epochs:2"
    assert both == variant_suffix(["dataset.resize=32", "trainer.max_epochs=2"], GROUPS)


def test_long_settings_keep_their_last_key_parts_and_a_hash_that_tells_groups_apart():
    args = ["dataset.options.n_train=64", "dataset.options.n_val=32", "dataset.options.n_test=32", "trainer.max_epochs=1"]
    short = variant_suffix(args, GROUPS)
    assert short.startswith("@n_test:32+n_train:64+n_val:32+max_epochs:1+h")
    other = variant_suffix([a.replace("dataset.options.n_train", "data.options.n_train") for a in args], GROUPS)
    assert other != short  # same last parts, other settings: another folder


def test_values_that_cannot_name_a_folder_give_a_hash():
    suffix = variant_suffix(["backbone.weights=/data/w.pt"], GROUPS)
    assert suffix.startswith("@v") and len(suffix) == 10 and "/" not in suffix
    assert suffix != variant_suffix(["backbone.weights=/data/other.pt"], GROUPS)


def test_the_variant_moves_the_folder_but_not_the_config_hash(tmp_path):
    base = ["dataset=probe", "trainer.max_epochs=2", f"paths.runs_dir={tmp_path}"]
    plain = compose_config(base)
    named = compose_config([*base, "variant=@trainer.max_epochs:2"])
    assert config_hash(plain) == config_hash(named)
    assert f"{tmp_path}/adhoc/probe/" in plain.paths.run_dir
    assert f"{tmp_path}/adhoc@trainer.max_epochs:2/probe/" in named.paths.run_dir


def _finished(folder, cfg_hash):
    run = RunFolder(folder)
    folder.mkdir(parents=True)
    run.write_text("config.yaml", "seed: 0\n")
    run.write_json("metrics.json", {"test/auroc": 0.7})
    run.write_json("metadata.json", {})
    run.write_text("predictions.csv", "id,label\n")
    run.mark_done(cfg_hash)


@pytest.mark.parametrize("same_config", [True, False])
def test_a_run_from_before_suffixes_is_moved_only_when_its_hash_matches(tmp_path, same_config):
    cfg = compose_config(["dataset=probe", "trainer.max_epochs=2", f"paths.runs_dir={tmp_path}",
                          "variant=@trainer.max_epochs:2"])
    cfg_hash = config_hash(cfg)
    old = tmp_path / "adhoc" / "probe" / "tinycnn__baseline" / "seed_0"
    _finished(old, cfg_hash if same_config else "0123456789ab")
    assert adopt_unsuffixed(cfg, cfg_hash) is same_config
    new = RunFolder(cfg.paths.run_dir)
    assert new.is_done(cfg_hash) is same_config
    assert old.exists() is not same_config
    if same_config:
        assert json.loads(new.file("metrics.json").read_text()) == {"test/auroc": 0.7}
        assert adopt_unsuffixed(cfg, cfg_hash) is False  # once moved, nothing left to move


def test_a_variant_folder_name_passes_the_name_check(tmp_path):
    from dkbench.runner.preflight import check_run_config

    suffix = variant_suffix(["dataset.options.n_train=64", "model.optimizer.lr=1e-3"], GROUPS)
    check_run_config(compose_config(["dataset=probe", f"variant={suffix}", f"paths.runs_dir={tmp_path}"]))
