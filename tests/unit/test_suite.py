"""Suite expansion, validation, run-folder locking and status records (no training)."""

from __future__ import annotations

import pytest

from dkbench.runner.run_folder import RunFolder, RunLockedError, config_hash, locked
from dkbench.runner.suite import expand_suite, validate_suite

SUITE = {
    "name": "s", "datasets": ["probe", "breastmnist"], "backbones": ["tinycnn"],
    "strategies": ["baseline", "other"], "seeds": [0, 1], "baseline": "baseline",
    "overrides": ["trainer.max_epochs=2"], "per_dataset": {"breastmnist": ["data.batch_size=64"]},
    "per_strategy": {"other": ["model.optimizer.lr=0.01"]}, "experiment": "medmnist_v2_resnet18_28",
}
VALID = {"dataset": ["probe", "breastmnist"], "backbone": ["tinycnn"], "strategy": ["baseline", "other"]}


def test_expansion_is_the_full_grid_with_overrides_in_precedence_order():
    cells = expand_suite(SUITE, ["trainer.max_epochs=1"])
    assert len(cells) == 2 * 1 * 2 * 2
    cell = next(c for c in cells if c.dataset == "breastmnist" and c.strategy == "other" and c.seed == 1)
    o = list(cell.overrides)
    assert o[0] == "experiment=medmnist_v2_resnet18_28"  # the preset first, axis choices win over it
    assert {"dataset=breastmnist", "strategy=other", "seed=1", "suite_name=s"} <= set(o)
    assert o.index("trainer.max_epochs=2") < o.index("data.batch_size=64") < o.index("model.optimizer.lr=0.01")
    assert o[-1] == "trainer.max_epochs=1"  # the command line wins
    assert cell.label == "breastmnist/tinycnn__other/seed_1"


def test_invalid_suite_lists_every_problem_and_valid_names():
    bad = {**SUITE, "datasets": ["probe", "nosuch"], "strategies": ["baseline"], "baseline": "nope", "colour": 1}
    with pytest.raises(ValueError) as err:
        validate_suite(bad, VALID)
    msg = str(err.value)
    assert "unknown dataset 'nosuch'" in msg and "breastmnist, probe" in msg
    assert "baseline 'nope'" in msg and "unknown suite key 'colour'" in msg


def test_lock_refuses_a_second_writer_and_is_released(tmp_path):
    run = RunFolder(tmp_path / "cell")
    with locked(run):
        with pytest.raises(RunLockedError, match="another process"):
            with locked(run):
                pass
    with locked(run):  # released on exit
        pass


def test_corrupt_done_marker_counts_as_not_done(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 1, "paths": {"x": 1}})
    run = RunFolder(tmp_path / "cell")
    run.path.mkdir()
    (run.path / "DONE").write_text("{not json")
    assert run.done_hash is None and not run.is_done(config_hash(cfg))


def test_config_hash_ignores_paths_and_logging_only():
    from omegaconf import OmegaConf

    base = {"seed": 0, "model": {"lr": 1}, "paths": {"runs_dir": "a"}, "logger": {}, "suite_name": "x"}
    h = config_hash(OmegaConf.create(base))
    assert config_hash(OmegaConf.create({**base, "paths": {"runs_dir": "b"}, "suite_name": "y"})) == h
    assert config_hash(OmegaConf.create({**base, "model": {"lr": 2}})) != h


def test_every_shipped_suite_is_valid_and_each_of_its_datasets_composes():
    """A typo in a suite file (a dataset renamed, an experiment preset missing) is caught here, not
    an hour into a sweep; one cell per dataset is composed and checked like `dkbench sweep` does."""
    from omegaconf import OmegaConf

    from dkbench.config import config_dir
    from dkbench.runner.compose import compose_config
    from dkbench.runner.preflight import check_run_config
    from dkbench.runner.sweep import _valid_names

    suites = sorted((config_dir() / "suite").glob("*.yaml"))
    assert len(suites) >= 5
    for path in suites:
        suite = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert suite["name"] == path.stem, f"{path.name}: name must equal the file name"
        validate_suite(suite, _valid_names())
        first_of_each_dataset = {}
        for cell in expand_suite(suite):
            first_of_each_dataset.setdefault(cell.dataset, cell)
        for cell in first_of_each_dataset.values():
            cfg = compose_config(list(cell.overrides))
            check_run_config(cfg)
            assert cfg.dataset.name == cell.dataset and cfg.backbone.name == cell.backbone
