"""The fault benchmark: its corruptions, its choice of faulty sites, its ClientApp, a tiny run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from bench import fault_bench
from bench.faulty_sites import (
    FAULTS,
    FaultPlan,
    InjectedDropoutError,
    corrupt_update,
)
from bench.faulty_sites import train as faulty_train
from client import app as site_app
from seqanom_core.federation import message_keys
from seqanom_core.federation.records import as_arrays

REPO = Path(__file__).resolve().parents[2]


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32)}


def _update(new: dict, old: dict) -> np.ndarray:
    return np.concatenate([(new[k].astype(np.float64) - old[k]).ravel() for k in sorted(old)])


def test_faults_of_the_bench_are_those_of_its_client_app():
    assert fault_bench.FAULTS == FAULTS


def test_nan_replaces_every_value_and_keeps_names_shapes_dtypes():
    g, loc = _arrays(0), _arrays(1)
    out = corrupt_update("nan", g, loc, np.random.default_rng(0))
    assert list(out) == list(loc)
    for k in loc:
        assert out[k].shape == loc[k].shape and out[k].dtype == loc[k].dtype
        assert np.isnan(out[k]).all()


def test_scale100_multiplies_the_update_not_the_model():
    g, loc = _arrays(0), _arrays(1)
    out = corrupt_update("scale100", g, loc, np.random.default_rng(0))
    np.testing.assert_allclose(_update(out, g), 100 * _update(loc, g), rtol=1e-5, atol=1e-4)


def test_signflip_reverses_the_update():
    g, loc = _arrays(0), _arrays(1)
    out = corrupt_update("signflip", g, loc, np.random.default_rng(0))
    np.testing.assert_allclose(_update(out, g), -_update(loc, g), rtol=1e-5, atol=1e-5)


def test_random_update_has_the_norm_of_the_honest_one_and_another_direction():
    g, loc = _arrays(0), _arrays(1)
    honest = _update(loc, g)
    out = corrupt_update("random", g, loc, np.random.default_rng(5))
    rand = _update(out, g)
    assert np.linalg.norm(rand) == pytest.approx(np.linalg.norm(honest), rel=1e-4)
    cos = rand @ honest / (np.linalg.norm(rand) * np.linalg.norm(honest))
    assert abs(cos) < 0.9
    again = corrupt_update("random", g, loc, np.random.default_rng(5))
    assert all(np.array_equal(out[k], again[k]) for k in out)  # seeded


@pytest.mark.parametrize("fault", ["clean", "dropout30", "bogus"])
def test_corrupt_update_refuses_what_is_not_a_byzantine_fault(fault):
    with pytest.raises(ValueError, match="Byzantine"):
        corrupt_update(fault, _arrays(0), _arrays(1), np.random.default_rng(0))


def test_byzantine_sites_are_a_fixed_fifth_and_nobody_drops_out():
    plan = FaultPlan("signflip", 10, seed=3)
    sites = plan.byzantine_sites()
    assert len(sites) == 2 and len(set(sites)) == 2 and all(0 <= k < 10 for k in sites)
    assert FaultPlan("signflip", 10, seed=3).byzantine_sites() == sites
    assert all(plan.dropped_sites(r) == [] for r in range(1, 6))


def test_dropouts_are_thirty_percent_drawn_afresh_each_round():
    plan = FaultPlan("dropout30", 10, seed=0)
    drawn = [plan.dropped_sites(r) for r in range(1, 6)]
    assert all(len(d) == 3 and len(set(d)) == 3 for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1  # not the same sites every round
    assert drawn == [FaultPlan("dropout30", 10, seed=0).dropped_sites(r) for r in range(1, 6)]
    assert plan.byzantine_sites() == []
    assert FaultPlan("clean", 10).dropped_sites(1) == [] == FaultPlan("clean", 10).byzantine_sites()


def test_plan_round_trips_through_its_file(tmp_path):
    plan = FaultPlan("random", 7, seed=2)
    plan.write(tmp_path)
    assert FaultPlan.read(tmp_path) == plan
    assert FaultPlan.read(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="fault must be"):
        FaultPlan("typo", 7)


# --------------------------------------------------------------------------- the ClientApp


def _train_message(arrays: dict[str, np.ndarray], server_round: int) -> Message:
    content = RecordDict({message_keys.ARRAYS: site_app.to_array_record(arrays),
                          message_keys.CONFIG: ConfigRecord({message_keys.SERVER_ROUND: server_round})})
    msg = Message(content=content, dst_node_id=1, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"m{server_round}"  # as the Grid sets it
    return msg


def _context(run_dir: Path, site: int) -> Context:
    return Context(run_id=1, node_id=site + 1, node_config={"partition-id": site},
                   state=RecordDict(), run_config={"checkpoint-dir": str(run_dir / "checkpoints")})


@pytest.fixture
def honest_site(monkeypatch):
    """``client.app.train`` replaced by a site that adds 1 to every weight (and the task identity
    a Message needs outside a Flower runtime)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)

    def train(msg: Message, context: Context) -> Message:
        local = {k: v + 1 for k, v in as_arrays(msg.content[message_keys.ARRAYS]).items()}
        return Message(content=RecordDict({
            message_keys.ARRAYS: site_app.to_array_record(local),
            message_keys.METRICS: MetricRecord({"num-examples": 10.0})}), reply_to=msg)

    monkeypatch.setattr(site_app, "train", train)


def test_client_app_corrupts_only_the_byzantine_sites(tmp_path, honest_site):
    plan = FaultPlan("signflip", 5, seed=1)
    plan.write(tmp_path)
    (bad,) = plan.byzantine_sites()
    g = _arrays(0)
    for site in range(5):
        reply = faulty_train(_train_message(g, 2), _context(tmp_path, site))
        upd = _update(as_arrays(reply.content[message_keys.ARRAYS]), g)
        np.testing.assert_allclose(upd, -1.0 if site == bad else 1.0, atol=1e-5)


def test_client_app_drops_the_planned_sites_and_is_honest_without_a_plan(tmp_path, honest_site):
    plan = FaultPlan("dropout30", 10, seed=0)
    plan.write(tmp_path)
    g = _arrays(0)
    for site in range(10):
        msg = _train_message(g, 3)
        if site in plan.dropped_sites(3):
            with pytest.raises(InjectedDropoutError, match=f"site-{site} is offline in round 3"):
                faulty_train(msg, _context(tmp_path, site))
        else:
            faulty_train(msg, _context(tmp_path, site))
    reply = faulty_train(_train_message(g, 3), _context(tmp_path / "no-plan", 0))
    np.testing.assert_allclose(_update(as_arrays(reply.content[message_keys.ARRAYS]), g), 1.0,
                               atol=1e-5)


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_tiny_run_rejects_the_nan_site_and_reports_a_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    out = tmp_path / "fault.json"
    fault_bench.main(["--sites", "3", "--shoppers", "120", "--rounds", "1", "--strategies",
                      "fedavg", "--faults", "nan", "--tmp-dir", str(tmp_path), "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["bench"] == "fault" and res["params"]["sites"] == 3
    (row,) = res["results"]["rows"]
    assert "failed" not in row, row.get("failed")
    assert row["strategy"] == "fedavg" and row["fault"] == "nan"
    assert len(row["byzantine_sites"]) == 1  # 20% of 3 sites
    # the NaN update reached the server and was rejected there; the other two were averaged
    assert row["rounds_completed"] == 1
    assert row["replies"] == [{"round": 1, "replied": 3, "rejected": 1, "aggregated": 2}]
    assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["auprc"] <= 1.0
    assert row["test_shoppers"] == res["results"]["data"]["test_shoppers"] > 0
    assert res["summary"] == {"fedavg": {"nan": row["auroc"]}}
    assert not list(tmp_path.glob("seqanom-fault-bench-*"))  # temporary files removed


def test_failure_reason_is_the_last_error_line_of_the_log():
    log_text = ("INFO round 1/1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                "RuntimeError: round 1: no usable training replies (3 sent, 3 received)\n"
                "INFO shutting down\n")
    assert fault_bench.failure_reason(log_text, 1) == (
        "RuntimeError: round 1: no usable training replies (3 sent, 3 received)")
    assert fault_bench.failure_reason("killed\n", -9) == "exit code -9"
