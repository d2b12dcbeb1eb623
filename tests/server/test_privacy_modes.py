"""Privacy modes in process: central DP (Flower's wrapper + accountant) and SecAgg+ (legacy stack)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fedtools import InProcessGrid, tiny_run_config
from flwr.app import Context, RecordDict
from flwr.serverapp import GaussianPrivacyEvent, RdpAccountant

import client.secagg
from client.app import app as client_app
from seqanom_core.detector import SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.privacy_ledger import PrivacyLedger
from server import central_dp
from server.app import main as server_main
from server.checkpoints import list_checkpoints
from server.federated_run import FederatedRun
from server.strategies import build_strategy

# site-2 can afford nothing at noise 1.0 (one round costs epsilon ~5.4 on these tiny sites)
NODES = {101: {"partition-id": 0}, 102: {"partition-id": 1},
         103: {"partition-id": 2, "privacy-budget": 0.5}}
FIXED_NOISE = {"noise-multiplier": 1.0, "epsilon": 50.0, "num-rounds": 1, "min-sites": 3}


def _norm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[k].astype(np.float64) - b[k]) ** 2).sum() for k in a)))


def _round_json(root: Path) -> dict:
    return json.loads((list_checkpoints(root)[-1][1] / "round.json").read_text())


def test_central_dp_clips_noises_accounts_and_counts_a_declined_site_as_null(tmp_path, site_dirs):
    clip, noise, k = 0.05, 1.0, 3
    cfg = tiny_run_config(tmp_path, site_dirs, **{
        **FIXED_NOISE, "privacy-mode": "local+central", "central-noise-multiplier": noise,
        "central-clipping-norm": clip, "central-sites-per-round": k, "central-epsilon": 20.0})
    raw_norms: dict[int, float] = {}
    settings = settings_from_run_config(cfg)

    def measure(nid, reply):
        if message_keys.ARRAYS in reply.content and message_keys.HISTOGRAMS not in reply.content:
            local = {n: a.numpy() for n, a in reply.content[message_keys.ARRAYS].items()}
            raw_norms[nid] = _norm(local, start)
        return reply

    grid = InProcessGrid(client_app, NODES, cfg, tamper=measure)
    run = FederatedRun(grid, build_strategy(settings.federation, settings.privacy), settings,
                       "central", Path(cfg["final-model-dir"]))
    start = {n: v.copy() for n, v in run.arrays.items()}
    records = run.run()

    # site-2 declined: it counts as a null update, so the average is still over k = 3 sites
    assert records[0].sites["site-2"]["declined"] is True
    assert set(raw_norms) == {101, 102} and min(raw_norms.values()) > 4 * clip
    # the wrapper clipped each site's update (in place, in the replies it aggregated) ...
    clipped = [{n: a.numpy() for n, a in m.content[message_keys.ARRAYS].items()} for m in grid.sent
               if message_keys.ARRAYS in m.content and message_keys.HISTOGRAMS not in m.content]
    assert len(clipped) == 2
    assert all(_norm(c, start) <= clip * (1 + 1e-4) for c in clipped)
    # ... and added Gaussian noise of std noise * clip / k to the average
    clean = {n: start[n] + sum(c[n].astype(np.float64) - start[n] for c in clipped) / k
             for n in start}
    resid = np.concatenate([(run.arrays[n] - clean[n]).ravel() for n in start])
    assert resid.std() == pytest.approx(noise * clip / k, rel=0.05)

    rec = _round_json(tmp_path / "ckpt")
    site_level = [g for g in rec["privacy"]["guarantees"] if g["level"] == "site"][0]
    reference = RdpAccountant(central_dp.build_accountant(settings.privacy).config)
    reference.compose(GaussianPrivacyEvent(noise, k, k))
    assert site_level["epsilon"] == pytest.approx(reference.get_privacy_spent().epsilon)
    assert site_level["delta"] == pytest.approx(1e-5) and site_level["releases"] == 1
    assert "Flower" in site_level["accounted_by"] and site_level["sites_per_round"] == k
    assert rec["privacy"]["server_saw_individual_updates"] is True
    shopper = [g for g in rec["privacy"]["guarantees"] if g["level"] == "shopper"][0]
    assert 0 < shopper["epsilon"] <= 50.0 and "Opacus" in shopper["accounted_by"]
    assert rec["central_accountant"]["compositions"][0]["count"] == 1


def test_central_budget_exhaustion_is_a_planned_stop(tmp_path, site_dirs, caplog):
    # at noise 2.0 and delta 1e-5, Flower's accountant gives epsilon 2.17 after one release and
    # 3.19 after two: a budget of 3 allows exactly one round
    cfg = tiny_run_config(tmp_path, site_dirs, **{
        **FIXED_NOISE, "num-rounds": 3, "min-sites": 2, "privacy-mode": "local+central",
        "central-noise-multiplier": 2.0, "central-sites-per-round": 2, "central-epsilon": 3.0})
    nodes = {101: {"partition-id": 0}, 102: {"partition-id": 1}}
    grid = InProcessGrid(client_app, nodes, cfg)
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
    with caplog.at_level(logging.WARNING):
        server_main(grid, context)  # returns normally: a planned stop is not a failure
    assert [r for r, _ in list_checkpoints(tmp_path / "ckpt")] == [1]
    assert "planned stop: central privacy budget: round 2 would pass central-epsilon 3.0" \
        in caplog.text
    det = SequenceDetector.load(tmp_path / "model", progress=False)
    assert "central privacy budget" in det.metadata_["stop_reason"]
    site_level = det.metadata_["privacy"]["guarantees"][1]
    assert site_level["releases"] == 1 and site_level["epsilon"] <= 3.0
    # nothing was sent for round 2: each site trained once (then released its count and the
    # final model's calibration)
    for k in range(2):
        kinds = [e["kind"] for e in PrivacyLedger.load(tmp_path / "ledgers" / f"site-{k}.json").entries]
        assert kinds == ["training-count", "model-update", "calibration-statistics",
                         "calibration-scores"]
    # resuming with a raised budget continues Flower's accounting from the checkpoint
    cfg2 = dict(cfg, **{"resume": True, "num-rounds": 2, "central-epsilon": 3.5})
    server_main(InProcessGrid(client_app, nodes, cfg2), Context(
        run_id=8, node_id=0, node_config={}, state=RecordDict(), run_config=cfg2))
    site_level = _round_json(tmp_path / "ckpt")["privacy"]["guarantees"][1]
    assert site_level["releases"] == 2 and site_level["epsilon"] == pytest.approx(3.189, abs=1e-3)


def test_central_config_is_checked_before_anything_is_sent(tmp_path, site_dirs):
    cfg = tiny_run_config(tmp_path, site_dirs, **{"privacy-mode": "local+central",
                                                  "central-epsilon": 0.1})
    s = settings_from_run_config(cfg)
    with pytest.raises(ConfigError, match="does not cover a single round"):
        build_strategy(s.federation, s.privacy)
    with pytest.raises(ConfigError, match="disagree"):
        FederatedRun(InProcessGrid(client_app, {}, cfg), build_strategy(s.federation), s, "x")


def test_secagg_sums_masked_updates_the_server_never_sees(tmp_path, site_dirs, monkeypatch):
    cfg = tiny_run_config(tmp_path, site_dirs, **{**FIXED_NOISE, "privacy-mode": "local+secagg"})
    sent_by_sites: dict[str, tuple[list[np.ndarray], int]] = {}
    fit = client.secagg.SecAggSite.fit

    def spy(self, parameters, config):
        update, weight, metrics = fit(self, parameters, config)
        sent_by_sites[metrics[message_keys.SITE_NAME]] = ([u.copy() for u in update], weight)
        return update, weight, metrics

    monkeypatch.setattr(client.secagg.SecAggSite, "fit", spy)
    settings = settings_from_run_config(cfg)
    grid = InProcessGrid(client_app, NODES, cfg)
    run = FederatedRun(grid, build_strategy(settings.federation, settings.privacy), settings,
                       "secagg", Path(cfg["final-model-dir"]))
    start = {n: v.copy() for n, v in run.arrays.items()}
    records = run.run()

    # the aggregate is the weighted mean of the sites' updates (site-2 declined: weight 0)
    assert sent_by_sites["site-2"][1] == 0 and records[0].sites["site-2"]["declined"] is True
    total = sum(w for _, w in sent_by_sites.values())
    names = list(start)
    for i, n in enumerate(names):
        expected = start[n] + sum(w * u[i] for u, w in sent_by_sites.values()) / total
        np.testing.assert_allclose(run.arrays[n], expected, atol=2e-4)
    # no train reply carried model arrays in clear: only masked integer vectors
    train_replies = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(train_replies) == 4 * 3
    assert all(len(rec) == 0 for m in train_replies for rec in m.content.array_records.values())
    assert sum("masked_params" in m.content.config_records["secaggplus_configs"]
               for m in train_replies) == 3
    # ledgers, checkpoints, metrics log and the privacy statement work as in the other modes
    kinds = [e["kind"] for e in PrivacyLedger.load(tmp_path / "ledgers" / "site-0.json").entries]
    assert kinds.count("model-update") == 1 and "calibration-scores" in kinds
    rec = _round_json(tmp_path / "ckpt")
    assert rec["privacy"]["mode"] == "local+secagg"
    assert rec["privacy"]["server_saw_individual_updates"] is False
    assert rec["privacy"]["secure_aggregation"]["clipping_range"] == 8.0
    assert [g["level"] for g in rec["privacy"]["guarantees"]] == ["shopper"]
    assert 0 < rec["sites"]["site-0"]["epsilon"] <= 50.0
    assert rec["sites"]["site-0"]["secagg-clipped"] == 0.0
    assert len((tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()) == 1
    SequenceDetector.load(tmp_path / "model", progress=False)


@pytest.mark.parametrize("over, match", [
    ({"privacy-mode": "central"}, "privacy-mode must be one of"),
    ({"privacy-mode": "local+central", "dp": False}, "set dp = true"),
    ({"privacy-mode": "local+secagg", "strategy": "krum"}, "works with strategy"),
    ({"privacy-mode": "local+secagg", "min-sites": 1}, "min-sites >= 2"),
    ({"privacy-mode": "local+central", "central-noise-multiplier": 0.0}, "must be positive"),
    ({"secagg-modulus-range": 3000}, "power of 2"),
])
def test_privacy_mode_config_errors(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        settings_from_run_config(tiny_run_config(tmp_path, tmp_path, **over))


def test_central_mode_samples_exactly_sites_per_round(tmp_path):
    s = settings_from_run_config(tiny_run_config(tmp_path, tmp_path, **{
        "privacy-mode": "local+central", "central-sites-per-round": 4, "min-sites": 2}))
    assert s.federation.min_sites == 4
    strategy = build_strategy(s.federation, s.privacy)
    assert strategy.num_sampled_clients == 4 and strategy.strategy.min_train_nodes == 4
    assert strategy.strategy.weighted_by_key == central_dp.SITE_WEIGHT
