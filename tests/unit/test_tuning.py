"""The tuned protocol's pieces (runner/tuning.py): spaces, sampling, validation-only selection."""

from __future__ import annotations

import math
import re

import pytest
from omegaconf import OmegaConf

from dkbench.config import config_dir
from dkbench.errors import RunConfigError
from dkbench.runner.compose import compose_config
from dkbench.runner.run_folder import config_hash
from dkbench.runner.tuning import (
    TrialResult,
    protocol,
    parse_distribution,
    sample_trial,
    search_space,
    select_trial,
    trial_overrides,
    tuning_options,
    validation_metric,
    validation_only,
)

STRATEGIES = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))
#: options that are a loss weight, a mixing weight, a threshold or a schedule: a strategy with one
#: of these must let the tuned protocol set it
KNOB = re.compile(r"(^|_)(weight|alpha|tau|quantile|fraction|growth|full_at)$")


def _options(name: str) -> dict:
    cfg = compose_config([f"strategy={name}"])
    return OmegaConf.to_container(cfg.strategy.options, resolve=True)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_declares_a_valid_space_covering_its_knobs(name):
    cfg = compose_config([f"strategy={name}"])
    assert "search" in cfg.strategy, f"{name}.yaml declares no `search:` (write `search: {{}}` with the reason)"
    space = search_space(cfg)  # raises on a key that is not an option or a malformed distribution
    assert {"model.optimizer.lr", "model.optimizer.weight_decay"} <= set(space)  # shared, declared once
    knobs = {k for k, v in _options(name).items() if KNOB.search(k) and isinstance(v, (int, float, dict))}
    missing = {k for k in knobs if f"strategy.options.{k}" not in space
               and not any(s.startswith(f"strategy.options.{k}.") for s in space)}
    allowed_untuned = {"global_local": {"loss_weights"}}  # three equal CE terms of AG-CNN's stages
    assert missing <= allowed_untuned.get(name, set()), f"{name}: tunable knobs without a space: {missing}"


def test_search_space_is_not_part_of_the_config_hash():
    cfg = compose_config(["strategy=attention_supervision"])
    before = config_hash(cfg)
    cfg.strategy.search = {"weight": {"uniform": [0.5, 0.6]}}
    cfg.search = {}
    assert config_hash(cfg) == before
    cfg.strategy.options.weight = 2.0  # the value itself is
    assert config_hash(cfg) != before


def test_sampling_is_reproducible_from_the_cell_and_trial_alone():
    space = search_space(compose_config(["strategy=attention_supervision"]))
    key = ("knowledge_probe", "probe", "tinycnn", "attention_supervision")
    first = [sample_trial(space, key, t) for t in range(6)]
    again = [sample_trial(space, key, t) for t in reversed(range(6))][::-1]  # any order, any process
    assert first == again
    assert first[0] == {}  # trial 0: the defaults
    assert len({tuple(sorted(p.items())) for p in first[1:]}) == 5  # distinct draws
    other = sample_trial(space, ("knowledge_probe", "probe", "tinycnn", "baseline"), 1)
    assert other != {k: v for k, v in first[1].items() if k in other}  # the cell is part of the stream
    for params in first[1:]:
        assert 1e-4 <= params["model.optimizer.lr"] <= 1e-2
        assert 0.1 <= params["strategy.options.weight"] <= 10.0
        assert 0.0 <= params["strategy.options.dilate"] <= 0.1


def test_log_uniform_spreads_over_decades_and_int_and_choice_stay_in_range():
    import numpy as np

    rng = np.random.default_rng(0)
    log = parse_distribution("x", {"log_uniform": [1e-4, 1e-2]})
    values = [log.sample(rng) for _ in range(2000)]
    below = sum(v < 1e-3 for v in values) / len(values)
    assert 0.45 < below < 0.55  # half the mass below the geometric midpoint
    ints = {parse_distribution("n", {"int": [5, 7]}).sample(rng) for _ in range(200)}
    assert ints == {5, 6, 7}
    assert {parse_distribution("c", {"choice": ["a", "b"]}).sample(rng) for _ in range(50)} == {"a", "b"}


@pytest.mark.parametrize("spec, message", [
    ({"uniform": [1.0, 0.5]}, "lo < hi"),
    ({"log_uniform": [0.0, 1.0]}, "lo > 0"),
    ({"normal": [0, 1]}, "not a distribution"),
    ({"int": [1.5, 3]}, "integer bounds"),
    ({"choice": []}, "non-empty"),
    (0.5, "not a distribution"),
])
def test_malformed_distributions_are_one_clear_error(spec, message):
    with pytest.raises(RunConfigError, match=message):
        parse_distribution("knob", spec)


def test_a_search_key_that_is_not_an_option_is_refused():
    cfg = compose_config(["strategy=attention_supervision"])
    cfg.strategy.search = {"wieght": {"uniform": [0.1, 1.0]}}
    with pytest.raises(RunConfigError, match="'wieght' is not one of its options"):
        search_space(cfg)


def test_overrides_round_trip_through_hydra():
    params = {"model.optimizer.lr": 0.0006767, "strategy.options.loss": "energy",
              "strategy.options.feed_attributes": False, "strategy.options.hidden": 64}
    overrides = trial_overrides(params)
    assert overrides == ["model.optimizer.lr=0.0006767", "strategy.options.feed_attributes=false",
                         "strategy.options.hidden=64", "strategy.options.loss=energy"]
    cfg = compose_config(["strategy=attribute_multitask", "model.optimizer.lr=0.0006767",
                          "strategy.options.feed_attributes=false"])
    assert cfg.model.optimizer.lr == 0.0006767 and cfg.strategy.options.feed_attributes is False


def _trial(k: int, val: float, test: float) -> TrialResult:
    return TrialResult(k, {"x": k}, validation_only({"val/auroc": val, "test/auroc": test, "val/loss": 1.0}), "h")


def test_selection_reads_validation_only_and_cannot_be_steered_by_test():
    trials = [_trial(0, 0.80, 0.99), _trial(1, 0.85, 0.50), _trial(2, 0.70, 0.95)]
    assert all(not k.startswith("test/") for t in trials for k in t.validation)  # test never reaches it
    assert select_trial(trials, "val/auroc", "max").trial == 1  # the test-best trial 0 is not chosen
    with pytest.raises(RunConfigError, match="validation metrics only"):
        select_trial(trials, "test/auroc", "max")
    assert select_trial(trials, "val/loss", "min").trial == 0  # all tied: the defaults win the tie


def test_selection_skips_trials_without_a_finite_score():
    trials = [_trial(0, math.nan, 0.9), _trial(1, 0.6, 0.1)]
    assert select_trial(trials, "val/auroc", "max").trial == 1


def test_validation_metric_is_the_rank_metrics_twin():
    assert validation_metric({"rank_metric": "test/dice"}, "val/loss") == "val/dice"
    assert validation_metric({}, "val/auroc") == "val/auroc"


def test_tuning_options_refuse_a_trial_seed_among_the_evaluation_seeds():
    with pytest.raises(RunConfigError, match="evaluation seeds"):
        tuning_options({"name": "s", "seeds": [0, 1, 2], "tuning": {"trials": 4, "trial_seed": 1}})
    with pytest.raises(RunConfigError, match="unknown tuning key"):
        tuning_options({"name": "s", "seeds": [0], "tuning": {"trails": 4}})
    with pytest.raises(RunConfigError, match="sampler"):
        tuning_options({"name": "s", "seeds": [0], "tuning": {"sampler": "tpe"}})
    assert tuning_options({"name": "s", "seeds": [0], "tuning": {"trials": 3}})["trials"] == 3


def test_protocol_names_are_checked_with_the_setting_to_type():
    assert protocol({}) == "default" and protocol({"protocol": "tuned"}) == "tuned"
    with pytest.raises(RunConfigError, match=r"protocol=tunned is not a protocol \(valid: default, tuned\)"):
        protocol({"protocol": "tunned"})
    with pytest.raises(RunConfigError, match=r"tuning.trials must be a whole number"):
        tuning_options({"name": "s", "seeds": [0], "tuning": {"trials": 0}})


def test_a_post_hoc_strategy_tries_the_baselines_networks(tmp_path):
    """anatomical_postprocess's trial k is the baseline's trial k (same sampled knobs), so the run
    it evaluates is that trial's own folder and config hash: one network per trial, trained once."""
    from dkbench.runner.run_folder import config_hash
    from dkbench.runner.tuned_sweep import plan_trials
    from dkbench.strategies import strategy_from_config
    from dkbench.strategies.base import SHARED_TRAINING

    suite = {"name": "seg", "datasets": ["probe_seg"], "backbones": ["unet"], "seeds": [0],
             "strategies": ["baseline", "anatomical_postprocess"], "baseline": "baseline",
             "rank_metric": "test/dice", "overrides": [f"paths.runs_dir={tmp_path}"], "tuning": {"trials": 3}}
    trials = plan_trials(suite, [], compose_config)
    base = trials.groups[("probe_seg", "unet", "baseline")]
    post = trials.groups[("probe_seg", "unet", "anatomical_postprocess")]
    assert [p for _, p, _ in post] == [p for _, p, _ in base] and post[1][1]  # trial 1 draws knobs
    for (_, _, base_cell), (_, _, post_cell) in zip(base, post):
        post_cfg, base_cfg = compose_config(list(post_cell.overrides)), compose_config(list(base_cell.overrides))
        twin = strategy_from_config(post_cfg.strategy).prestage_runs(post_cfg)[SHARED_TRAINING]
        assert twin.paths.run_dir == base_cfg.paths.run_dir and config_hash(twin) == config_hash(base_cfg)
