"""The flat Flower run config: typed, validated, and declared in full in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import default_run_config, settings_from_run_config

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_pyproject_declares_every_run_config_key():
    """`flwr run --run-config` only overrides keys the app declares: all of them must be there."""
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(default_run_config())
    settings = settings_from_run_config(declared)  # and the declared values are valid
    assert settings.train.dp is not None  # the app trains with DP unless told otherwise


def test_defaults_round_trip_and_overrides_are_typed():
    s = settings_from_run_config(default_run_config())
    assert s.train.dp is None and s.federation.num_rounds == 5
    s = settings_from_run_config({"num-rounds": "3", "dp": "true", "epsilon": 2})
    assert s.federation.num_rounds == 3 and s.budget == 2.0 and s.train.dp is not None


def test_sites_train_with_sgd_under_dp_and_adamw_without_unless_told_otherwise():
    s = settings_from_run_config({"dp": True})
    assert (s.train.optimizer, s.train.lr) == ("sgd", 1.0)
    s = settings_from_run_config({"dp": False})
    assert (s.train.optimizer, s.train.lr) == ("adamw", 0.01)
    s = settings_from_run_config({"dp": True, "local-optimizer": "adamw", "lr": 0.02})
    assert (s.train.optimizer, s.train.lr) == ("adamw", 0.02)
    s = settings_from_run_config({"dp": False, "local-optimizer": "sgd"})
    assert (s.train.optimizer, s.train.lr) == ("sgd", 1.0)
    s = settings_from_run_config({"dp": True, "lr": 0.5})
    assert (s.train.optimizer, s.train.lr) == ("sgd", 0.5)


@pytest.mark.parametrize("bad", [{"num-round": 3}, {"strategy": "fedsgd"}, {"num-rounds": 0},
                                 {"dp": "maybe"}, {"local-optimizer": "adam"}, {"lr": -0.1},
                                 {"lr": float("nan")},
                                 # non-finite numbers: a NaN budget would let every release through
                                 {"epsilon": float("nan")}, {"epsilon": float("inf")},
                                 {"privacy-mode": "local+central", "central-clipping-norm": float("nan")},
                                 {"max-noise": float("inf")}])
def test_bad_run_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        settings_from_run_config(bad)


def test_a_site_budget_must_be_a_positive_number():
    import dataclasses
    import math

    s = settings_from_run_config({})
    for bad in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(ConfigError):
            dataclasses.replace(s, budget=bad)  # what a node's privacy-budget goes through
