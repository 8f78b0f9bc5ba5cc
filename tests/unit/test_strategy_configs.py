"""Every strategy YAML against its typed options: the YAML is the documented config, the
dataclass the schema; they must agree, and bad options fail with one line naming the fix."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from dkbench.config import config_dir
from dkbench.runner.compose import compose_config
from dkbench.strategies import STRATEGIES, StrategyOptions, create_strategy, strategy_from_config

STRATEGY_CONFIGS = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))


def _node(name: str):
    return compose_config([f"strategy={name}", "dataset=probe"]).strategy


@pytest.mark.parametrize("name", STRATEGY_CONFIGS)
def test_yaml_options_parse_into_the_typed_options(name):
    node = _node(name)
    strategy = strategy_from_config(node)
    assert node.name == name, "a strategy YAML's `name` is its file name (run folders use it)"
    fields = {f.name: f for f in dataclasses.fields(strategy.Options)}
    given = OmegaConf.to_container(node.options, resolve=True) or {}
    assert set(given) <= set(fields)
    if node.name == node.method:  # the canonical YAML documents every option, at its default
        own = set(fields) - {f.name for f in dataclasses.fields(StrategyOptions)}  # base ones may stay implicit
        assert own <= set(given), f"{name}.yaml lacks options {sorted(own - set(given))}"
        defaults = strategy.Options()
        for key, value in given.items():
            expected = getattr(defaults, key)
            value = tuple(value) if isinstance(value, list) else value
            assert value == expected, f"{name}.yaml: {key}={value!r}, dataclass default {expected!r}"


@pytest.mark.parametrize("method", STRATEGIES.names())
def test_unknown_option_is_refused_in_one_line(method):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['no_such_option'\]") as err:
        create_strategy(method, no_such_option=1)
    assert "\n" not in str(err.value)


def test_variant_yamls_inherit_their_parent():
    """A variant file states only what differs; everything else comes from the parent YAML."""
    for variant, parent, differs in [("roi_input_predicted", "roi_input", {"test_roi"}),
                                     ("handcrafted_feature_nomask", "handcrafted_feature", {"use_mask"}),
                                     ("handcrafted_decision_nomask", "handcrafted_decision", {"use_mask"}),
                                     ("transfer_natural_linear", "transfer_natural", {"freeze"})]:
        text = (config_dir() / "strategy" / f"{variant}.yaml").read_text()
        assert f"- {parent}" in text
        a, b = (OmegaConf.to_container(_node(n).options, resolve=True) for n in (variant, parent))
        assert {k for k in a if a[k] != b.get(k)} == differs and set(a) == set(b)


def test_wrong_type_and_bad_choice_name_the_option_and_the_fix():
    with pytest.raises(ValueError, match=r"option 'dropout' must be float, got 'high' \(fix strategy.options.dropout\)"):
        create_strategy("baseline", dropout="high")
    with pytest.raises(ValueError, match=r"option 'dropout' must be >= 0 and < 1, got 1.0"):
        create_strategy("baseline", dropout=1.0)
