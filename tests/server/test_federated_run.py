"""ServerApp round loop + ClientApp handlers in process: checkpoints, budgets, NaN, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fedtools import InProcessGrid, tiny_run_config
from flwr.app import Array, ArrayRecord

from client.app import app as client_app
from seqanom_core.detector import SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.global_model import initial_global_arrays
from seqanom_core.federation.releases import SITE_METRICS
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.privacy_ledger import PrivacyLedger
from server.checkpoints import list_checkpoints
from server.federated_run import FederatedRun
from server.strategies import build_strategy

NODES = {101: {"partition-id": 0}, 102: {"partition-id": 1}, 103: {"partition-id": 2}}


def _run(cfg: dict, nodes=None, tamper=None, run_id: str = "test"):
    grid = InProcessGrid(client_app, nodes or NODES, cfg, tamper=tamper)
    s = settings_from_run_config(cfg)
    run = FederatedRun(grid, build_strategy(s.federation), s, run_id,
                       Path(cfg["final-model-dir"]))
    return run, run.run(), grid


def test_rounds_write_checkpoints_ledgers_and_a_scorable_model(tmp_path, site_dirs):
    cfg = tiny_run_config(tmp_path, site_dirs)
    run, records, grid = _run(cfg)
    assert [r.round for r in records] == [1, 2]
    ckpts = list_checkpoints(tmp_path / "ckpt")
    assert [r for r, _ in ckpts] == [1, 2]
    rec = json.loads((ckpts[-1][1] / "round.json").read_text())
    assert set(rec["sites"]) == {"site-0", "site-1", "site-2"}
    assert all(0 < s["epsilon"] <= 8.0 for s in rec["sites"].values())
    # the round's train metrics: no mean epsilon (no site's guarantee); the worst site's is in
    # the record's privacy statement, after the calibration releases that followed training
    assert not {"epsilon", "delta", "noise-multiplier", "budget"} & set(rec["train"])
    ledgers = [PrivacyLedger.load(tmp_path / "ledgers" / f"site-{k}.json") for k in range(3)]
    assert rec["privacy"]["epsilon"] == pytest.approx(max(lg.spent() for lg in ledgers))
    assert rec["privacy"]["epsilon"] > max(s["epsilon"] for s in rec["sites"].values())
    assert rec["threshold"] is not None and np.isfinite(rec["threshold"])
    # calibrated once, after the last round: round 1 keeps the global arrays only
    assert (ckpts[0][1] / "global_model.safetensors").is_file()
    assert records[0].threshold is None and not (ckpts[0][1] / "config.json").exists()
    # the last checkpoint and the final model load as model directories and score shoppers
    det = SequenceDetector.load(tmp_path / "model", progress=False)
    assert det.metadata_["privacy"]["dp"] and det.metadata_["privacy"]["epsilon"] <= 8.0
    assert det.metadata_["calibration"].startswith("federated, accounted")
    SequenceDetector.load(ckpts[-1][1], progress=False)
    lines = (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["round"] == 2
    for ledger in ledgers:
        # one noisy count, two DP-SGD rounds, two calibration releases; all within the budget
        assert [e["kind"] for e in ledger.entries] == [
            "training-count", "model-update", "model-update", "calibration-statistics",
            "calibration-scores"]
        assert ledger.spent() <= 8.0
        kinds = ledger.by_kind()
        assert set(kinds) == {"training-count", "model-update", "calibration-statistics",
                              "calibration-scores"}
        assert max(kinds.values()) < ledger.spent() <= sum(kinds.values())
    # the statement: every release kind accounted with its epsilon, or public with a reason
    releases = rec["privacy"]["releases"]
    assert {r["protection"] for r in releases} == {"accounted", "public"}
    for r in releases:
        assert r["how"] and (r["protection"] == "public" or r.get("derived")
                             or r["epsilon_of_kind"] > 0)
    assert {r["name"] for r in releases if r["protection"] == "accounted"
            and not r.get("derived")} == {"arrays", "stat-histograms", "score-histogram",
                                          "num-examples"}
    # nothing but arrays, histograms, the site name and listed scalars left the sites
    for reply in grid.sent:
        assert set(reply.content.keys()) <= {message_keys.ARRAYS, message_keys.METRICS, message_keys.HISTOGRAMS, message_keys.SITE}
        if message_keys.METRICS in reply.content:
            assert set(reply.content[message_keys.METRICS].keys()) <= SITE_METRICS


def test_resume_from_an_uncalibrated_round_finishes_the_run(tmp_path, site_dirs):
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 3, "dp": False})
    _run(cfg)
    for r in (2, 3):  # as if the server died after round 1 (not calibrated: only round 3 is)
        shutil.rmtree(tmp_path / "ckpt" / f"round-{r:04d}")
    _, records, _ = _run(dict(cfg, resume=True))
    assert [r.round for r in records] == [1, 2, 3]
    assert [r.threshold is None for r in records] == [True, True, False]


def test_calibration_every_round_makes_every_checkpoint_a_model(tmp_path, site_dirs):
    cfg = tiny_run_config(tmp_path, site_dirs, **{"calibration-every": 1})
    _, records, _ = _run(cfg)
    assert all(r.threshold is not None for r in records)
    for _, path in list_checkpoints(tmp_path / "ckpt"):
        SequenceDetector.load(path, progress=False)
    ledger = PrivacyLedger.load(tmp_path / "ledgers" / "site-0.json")
    assert sum(e["kind"].startswith("calibration") for e in ledger.entries) == 4
    assert ledger.spent() <= 8.0


def test_nan_update_is_rejected_and_does_not_poison_the_model(tmp_path, site_dirs):
    def poison(nid, reply):
        if nid == 102 and message_keys.ARRAYS in reply.content:
            arrays = {k: np.full(v.shape, np.nan, dtype=np.float32) if v.dtype.kind == "f" else v
                      for k, v in ((k, a.numpy()) for k, a in reply.content[message_keys.ARRAYS].items())}
            reply.content[message_keys.ARRAYS] = ArrayRecord({k: Array.from_numpy_ndarray(v)
                                                   for k, v in arrays.items()})
        return reply

    run, records, _ = _run(tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1}), tamper=poison)
    assert [r["site"] for r in records[0].rejected] == ["site-1"]
    assert "NaN" in records[0].rejected[0]["reason"]
    assert all(np.isfinite(v).all() for v in run.arrays.values() if v.dtype.kind == "f")


def test_site_over_budget_declines_and_the_run_goes_on(tmp_path, site_dirs):
    nodes = dict(NODES)
    # noise 1.0 on these tiny sites costs epsilon ~5.4 in round 1 and ~7.5 after round 2
    nodes[103] = {"partition-id": 2, "privacy-budget": 6.0}
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 3, "noise-multiplier": 1.0,
                                                  "epsilon": 50.0})
    _, records, _ = _run(cfg, nodes)
    assert len(records) == 3
    declined = [r.sites["site-2"]["declined"] for r in records]
    assert declined[0] is False and declined[-1] is True
    assert all(not r.sites["site-0"]["declined"] for r in records)
    spent = PrivacyLedger.load(tmp_path / "ledgers" / "site-2.json").spent()
    assert 0 < spent <= 6.0
    # restarting the site (new run, same ledger file) continues its ledger: it declines at once
    # (its count and calibration may still be released while the budget allows them)
    cfg2 = dict(cfg, **{"checkpoint-dir": str(tmp_path / "ckpt2"), "num-rounds": 1})
    _, records2, _ = _run(cfg2, nodes, run_id="second")
    assert records2[0].sites["site-2"]["declined"] is True
    again = PrivacyLedger.load(tmp_path / "ledgers" / "site-2.json")
    assert spent <= again.spent() <= 6.0
    assert not [e for e in again.run_entries("second", "model-update")]


def test_resume_continues_after_the_latest_checkpoint(tmp_path, site_dirs):
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "dp": False})
    _run(cfg)
    resumed, records, grid = _run(dict(cfg, **{"num-rounds": 2, "resume": True}))
    assert [r.round for r in records] == [1, 2]
    train_rounds = {int(m.content[message_keys.METRICS]["num-examples"] > 0) for m in grid.sent}
    assert train_rounds == {1}
    assert [r for r, _ in list_checkpoints(tmp_path / "ckpt")] == [1, 2]


def test_resume_with_other_model_settings_is_refused(tmp_path, site_dirs):
    """A checkpoint written under other model settings (here without the history copy, as
    checkpoints of older versions are) cannot silently seed a run whose sites build another
    model: the error names the checkpoint and the differing setting."""
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "dp": False,
                                                  "history-copy": False})
    _run(cfg)
    with pytest.raises(ConfigError, match=r"round-0001.*history_copy=False"):
        _run(dict(cfg, **{"num-rounds": 2, "resume": True, "history-copy": True}))


def test_round_without_usable_replies_fails_loudly(tmp_path, site_dirs):
    def break_all(nid, reply):
        if message_keys.ARRAYS in reply.content and message_keys.HISTOGRAMS not in reply.content:
            reply.content[message_keys.ARRAYS] = ArrayRecord({"bogus": Array.from_numpy_ndarray(np.zeros(3))})
        return reply

    with pytest.raises(RuntimeError, match="no usable training replies"):
        _run(tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1}), tamper=break_all)


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
def test_every_strategy_completes_a_round(tmp_path, site_dirs, strategy):
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "dp": False,
                                                  "strategy": strategy})
    run, records, _ = _run(cfg)
    assert not records[0].rejected and records[0].threshold is not None
    assert all(np.isfinite(v).all() for v in run.arrays.values() if v.dtype.kind == "f")
    initial = initial_global_arrays(settings_from_run_config(cfg))
    assert any(not np.allclose(run.arrays[k], v) for k, v in initial.items())  # it trained


def test_resumed_fedadam_keeps_its_moments_and_matches_an_uninterrupted_run(tmp_path, site_dirs):
    """FedAdam's server moments are checkpointed: 1 round + resume == 2 rounds (no DP noise)."""
    base = {"dp": False, "strategy": "fedadam", "server-lr": 0.05}
    full, _, _ = _run(tiny_run_config(tmp_path / "full", site_dirs, **base))
    cut = tiny_run_config(tmp_path / "cut", site_dirs, **base)
    _run(dict(cut, **{"num-rounds": 1}))
    assert (tmp_path / "cut" / "ckpt" / "round-0001" / "strategy_state.safetensors").is_file()
    resumed, records, _ = _run(dict(cut, resume=True))
    assert [r.round for r in records] == [1, 2]
    for k, v in full.arrays.items():
        np.testing.assert_allclose(resumed.arrays[k], v, atol=2e-3, err_msg=k)


def test_sites_with_the_same_shoppers_add_different_calibration_noise(tmp_path, site_dirs):
    # two nodes holding the same partition: their histograms differ only by their noise, which
    # used to be drawn from one seed that every site derived from the run config
    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "dp": False})
    _, _, grid = _run(cfg, nodes={101: {"partition-id": 0}, 102: {"partition-id": 0}})
    hists = [np.asarray(r.content[message_keys.HISTOGRAMS][message_keys.STAT_HIST].numpy()) for r in grid.sent
             if message_keys.HISTOGRAMS in r.content and message_keys.STAT_HIST in r.content[message_keys.HISTOGRAMS]]
    assert len(hists) == 2
    diff = hists[0] - hists[1]
    assert np.all(np.isfinite(diff)) and np.std(diff) > 0.5  # two independent N(0, 0.5^2)


def test_a_funnel_run_calibrates_the_funnel_statistic_from_the_sites_histograms(tmp_path,
                                                                              site_dirs):
    from seqanom_core.scoring import stat_names

    cfg = tiny_run_config(tmp_path, site_dirs, **{"num-rounds": 1, "item-states": "funnel"})
    _, _, grid = _run(cfg)
    det = SequenceDetector.load(tmp_path / "model", progress=False)
    assert det.tokenizer_config.item_states == "funnel"
    assert det.calibrator_.names == stat_names(funnel=True)
    assert np.isfinite(det.calibrator_.center).all() and (det.calibrator_.scale > 0).all()
    # one statistic histogram per statistic left each site (11 with funnel item states)
    sizes = {reply.content[message_keys.HISTOGRAMS][message_keys.STAT_HIST].numpy().shape[0]
             for reply in grid.sent if message_keys.HISTOGRAMS in reply.content
             and message_keys.STAT_HIST in reply.content[message_keys.HISTOGRAMS]}
    assert sizes == {len(stat_names(funnel=True))}
