"""A site's own privacy policy bounds what a run config can ask (in process: ServerApp round loop
and ClientApp handlers); the policy's rules themselves."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from fedtools import InProcessGrid, tiny_run_config

from client.app import app as client_app
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.federation.site_policy import DEFAULT_SITE_BUDGET, REASONS, SitePolicy
from seqanom_core.privacy_ledger import PrivacyLedger
from server.federated_run import FederatedRun
from server.strategies import build_strategy


def _run(cfg: dict, nodes: dict, run_id: str = "policy"):
    grid = InProcessGrid(client_app, nodes, cfg)
    s = settings_from_run_config(cfg)
    return FederatedRun(grid, build_strategy(s.federation), s, run_id,
                        Path(cfg["final-model-dir"])).run()


def test_a_run_asking_for_less_privacy_is_declined_by_the_sites_that_forbid_it(
        tmp_path, site_dirs, caplog):
    nodes = {101: {"partition-id": 0}, 102: {"partition-id": 1, "require-dp": True},
             103: {"partition-id": 2, "allow-dp-seed": False}}
    caplog.set_level(logging.INFO)
    # no DP: site-1 requires it and declines; the others (no DP needed, no seed) train
    records = _run(tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "dp": False}), nodes)
    sites = records[0].sites
    assert sites["site-1"]["declined"] and sites["site-1"]["declined-policy"] == 1
    assert not sites["site-0"]["declined"] and not sites["site-2"]["declined"]
    assert REASONS[1] in caplog.text and "site-1 declined the run by its own privacy policy" \
        in caplog.text
    # a seeded DP run: site-2 forbids seeds and declines before releasing anything
    cfg = tiny_run_config(tmp_path / "b", site_dirs, **{"num-rounds": 1, "dp-seed": 3})
    records = _run(cfg, nodes, run_id="seeded")
    sites = records[0].sites
    assert sites["site-2"]["declined"] and sites["site-2"]["declined-policy"] == 4
    assert not sites["site-0"]["declined"] and not sites["site-1"]["declined"]
    ledger = tmp_path / "b" / "ledgers" / "site-2.json"
    assert not ledger.exists() or PrivacyLedger.load(ledger).spent() == 0


def test_more_rounds_than_a_site_allows_and_every_site_declining_end_the_run(tmp_path,
                                                                             site_dirs):
    nodes = {101: {"partition-id": 0, "max-rounds": 1}, 102: {"partition-id": 1, "max-rounds": 1}}
    # no round completes: the run ends naming why, with no global model to save
    with pytest.raises(RuntimeError, match="site-0, site-1 refused the run by their own privacy "
                                           "policy"):
        _run(tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 2}), nodes)
    assert not (tmp_path / "model").exists()


def test_a_deployed_sites_defaults_are_strict_and_its_budget_caps_the_run(tmp_path, site_dirs):
    deployed = SitePolicy.from_node_config({"data-path": "x.csv"})
    assert deployed == SitePolicy(require_dp=True, budget=DEFAULT_SITE_BUDGET, max_delta=1e-5,
                                  max_rounds=None, allow_dp_seed=False)
    base = tiny_run_config(tmp_path, site_dirs)
    assert deployed.refusal(settings_from_run_config(dict(base, dp=False))) == 1
    assert deployed.refusal(settings_from_run_config(dict(base, delta=0.2))) == 2
    assert deployed.refusal(settings_from_run_config(dict(base, **{"dp-seed": 1}))) == 4
    assert deployed.refusal(settings_from_run_config(base)) == 0
    # a run may ask for less epsilon (used) but never for more (capped at the site's budget)
    assert deployed.capped_budget(settings_from_run_config(dict(base, epsilon=1000.0))) == 8.0
    assert deployed.capped_budget(settings_from_run_config(dict(base, epsilon=2.0))) == 2.0
    mine = SitePolicy.from_node_config({"data-path": "x.csv", "privacy-budget": 3.0,
                                        "require-dp": "false", "allow-dp-seed": True,
                                        "max-rounds": 4.0})
    assert (mine.budget, mine.require_dp, mine.allow_dp_seed, mine.max_rounds) == \
        (3.0, False, True, 4)
    # a simulated partition follows the run config unless its node config says otherwise
    sim = SitePolicy.from_node_config({"partition-id": 0})
    assert sim.refusal(settings_from_run_config(dict(base, dp=False, **{"dp-seed": 1}))) == 0


@pytest.mark.parametrize("node", [{"privacy-budget": -1.0}, {"privacy-budget": math.nan},
                                  {"max-delta": 1.5}, {"max-rounds": 0}, {"require-dp": "maybe"},
                                  {"allow-dp-seed": 2}])
def test_a_bad_policy_value_is_a_one_line_error(node):
    with pytest.raises(ConfigError, match="node config"):
        SitePolicy.from_node_config({"data-path": "x.csv", **node})
