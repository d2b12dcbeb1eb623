"""Message audit: a real 2-round run in process; every site reply holds only what may leave a site.

The replies are taken where the grid collects them (``InProcessGrid.sent``), after the real
ClientApp handlers built them. The sites use deployment-style node config (``data-path``,
``ledger-path``, ...) and Taobao-like 7-digit user ids, so an id that leaks is recognisable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fedtools import InProcessGrid, tiny_run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType
from message_audit import (
    SCORE_QUERY,
    MessageAuditError,
    ReplyPolicy,
    audit_replies,
    model_shapes,
    site_identifiers,
)

import client.app as client_module
from client.app import app as client_app
from seqanom_core.federation import message_keys
from seqanom_core.federation.calibration_histograms import TREE_SIZE
from seqanom_core.federation.releases import public_names
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.ingest import write_events
from seqanom_core.sequences import split_events_by_shopper
from server.federated_run import FederatedRun
from server.strategies import build_strategy
from simulation.inject import inject_anomalies
from simulation.synth import SynthConfig, synthesize_events

SITES = ("site-a", "site-b")


@pytest.fixture(scope="module")
def audit_sites(tmp_path_factory) -> Path:
    """Two small labelled sites (site-a|b/train|test.parquet, labels.csv) with 7-digit user ids."""
    root = tmp_path_factory.mktemp("audit-sites")
    events = synthesize_events(SynthConfig(n_shoppers=100, n_sites=2, seed=11))
    uid = pc.cast(events.column("user_id"), pa.int64())
    taobao_like = pc.cast(pc.add(pc.multiply(uid, 7919), 1_000_003), pa.string())
    events = events.set_column(events.schema.get_field_index("user_id"), "user_id", taobao_like)
    for k, (name, source) in enumerate(zip(SITES, sorted(set(events.column("site").to_pylist())),
                                           strict=True)):
        part = events.filter(pc.equal(events.column("site"), source))
        train, test = split_events_by_shopper(part, 0.3, k)
        test, labels = inject_anomalies(test, rate=0.4, seed=k)
        d = root / name
        d.mkdir()
        write_events(train, d / "train.parquet")
        write_events(test, d / "test.parquet")
        labels.to_csv(d / "labels.csv", index=False)
    return root


def _nodes(sites: Path, ledgers: Path, **extra) -> dict[int, dict]:
    nodes = {}
    for k, name in enumerate(SITES):
        d = sites / name
        # a policy that lets the run config decide (the audit is about what replies hold; the
        # policy's own checks are in test_site_policy_run.py)
        nodes[201 + k] = {"data-path": str(d / "train.parquet"), "test-path": str(d / "test.parquet"),
                          "labels-path": str(d / "labels.csv"), "site-name": name,
                          "ledger-path": str(ledgers / f"{name}.json"), "require-dp": False,
                          "allow-dp-seed": True, "privacy-budget": 1000.0,
                          **extra.get(name, {})}
    return nodes


def _policy(cfg: dict, nodes: dict[int, dict], sites: Path) -> ReplyPolicy:
    files = [f for name in SITES for f in sorted((sites / name).iterdir())]
    return ReplyPolicy(param_shapes=model_shapes(cfg),
                       site_names={nid: n["site-name"] for nid, n in nodes.items()},
                       identifiers=site_identifiers(files),
                       calibration_noise=settings_from_run_config(cfg).federation.calibration_noise,
                       dp=settings_from_run_config(cfg).train.dp is not None)


def _run(cfg: dict, nodes: dict[int, dict], app=client_app, may_fail: bool = False
         ) -> InProcessGrid:
    grid = InProcessGrid(app, nodes, cfg)
    s = settings_from_run_config(cfg)
    run = FederatedRun(grid, build_strategy(s.federation), s, "audit", Path(cfg["final-model-dir"]))
    try:
        run.run()
    except Exception:
        if not may_fail:
            raise
    return grid


def test_every_site_reply_of_a_dp_run_passes_the_audit(tmp_path, audit_sites):
    # site-b's budget lets it train in round 1 and makes it decline round 2
    cfg = tiny_run_config(tmp_path, audit_sites, **{"num-rounds": 2, "noise-multiplier": 1.0,
                                                    "epsilon": 50.0})
    nodes = _nodes(audit_sites, tmp_path / "ledgers", **{"site-b": {"privacy-budget": 6.0}})
    policy = _policy(cfg, nodes, audit_sites)
    assert len(policy.identifiers) > 1000 and "1007922" in policy.identifiers  # synthetic user 1, renamed
    grid = _run(cfg, nodes)
    seen = audit_replies(grid.sent, policy)
    # the audit saw every kind of reply: model updates, a declined round, evaluation, score query
    # (the run calibrates once, after its last round)
    assert seen[(MessageType.TRAIN, False)] == 3
    assert seen[(MessageType.TRAIN, True)] == 1
    assert seen[(MessageType.EVALUATE, False)] == 2
    assert seen[(SCORE_QUERY, False)] == 2
    assert sum(seen.values()) == len(grid.sent) == 8


def _public_values(grid: InProcessGrid) -> list[tuple[str, dict]]:
    """Per reply (in order): its type, and its values that the release list marks public."""
    public = public_names()
    out = []
    for reply in grid.sent:
        metrics = dict(reply.content.get(message_keys.METRICS, {}))
        values = {k: v for k, v in metrics.items() if k in public}
        values["record names"] = sorted(reply.content.keys())
        values["metric names"] = sorted(metrics)
        values[message_keys.SITE] = dict(reply.content[message_keys.SITE])
        out.append((reply.metadata.message_type, values))
    return out


def test_public_values_do_not_change_when_one_shopper_is_removed(tmp_path, audit_sites):
    """What the release list marks public carries nothing about any shopper: the same run at
    site-a, with and without one of its shoppers, sends the same public values (the accounted
    ones may differ), and the same kinds of records and metrics."""
    smaller = tmp_path / "smaller"
    shutil.copytree(audit_sites, smaller)
    train = pq.read_table(smaller / "site-a" / "train.parquet")
    one = train.column("user_id")[0]
    pq.write_table(train.filter(pc.not_equal(train.column("user_id"), one)),
                   smaller / "site-a" / "train.parquet")
    seen = []
    for k, sites in enumerate((audit_sites, smaller)):
        cfg = tiny_run_config(tmp_path / f"run{k}", sites, **{"num-rounds": 1, "dp-seed": 3})
        nodes = {nid: n for nid, n in _nodes(sites, tmp_path / f"ledgers{k}").items() if nid == 201}
        grid = _run(cfg, nodes)
        audit_replies(grid.sent, _policy(cfg, nodes, sites))
        seen.append(_public_values(grid))
    assert [t for t, _ in seen[0]] == [t for t, _ in seen[1]]
    assert seen[0] == seen[1]
    assert {"budget", message_keys.SITE} <= {k for _, v in seen[0] for k in v}


def test_audit_catches_a_planted_extra_metric(tmp_path, audit_sites):
    """A value the release list does not name (here the site's own validation loss, which it
    measures but keeps) fails the audit, whatever its value."""
    real = client_module.to_metric_record

    def leaky_metrics(metrics):
        return real({**metrics, "loss": 2.5})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "to_metric_record", leaky_metrics)
        grid, policy = _one_round(tmp_path, audit_sites)
    with pytest.raises(MessageAuditError, match=r"metric 'loss' is not in SITE_METRICS"):
        audit_replies(grid.sent, policy)


def _one_round(tmp_path: Path, sites: Path, app=client_app, may_fail: bool = False
               ) -> tuple[InProcessGrid, ReplyPolicy]:
    """One round without DP at site-a (fast): train, evaluate and score-summary replies."""
    cfg = tiny_run_config(tmp_path, sites, **{"num-rounds": 1, "dp": False})
    nodes = {nid: n for nid, n in _nodes(sites, tmp_path / "ledgers").items() if nid == 201}
    return _run(cfg, nodes, app, may_fail), _policy(cfg, nodes, sites)


def _site_ids(sites: Path) -> tuple[str, str]:
    """A user id and an item id of site-a (as the site's own files hold them)."""
    import pyarrow.parquet as pq

    t = pq.read_table(sites / "site-a" / "train.parquet", columns=["user_id", "item_id"])
    items = sorted(t.column("item_id").to_pylist(), key=len)
    return t.column("user_id")[0].as_py(), items[-1]


def test_audit_catches_a_user_id_in_a_config_record(tmp_path, audit_sites):
    user, _ = _site_ids(audit_sites)

    def leaky_app(msg, context):
        reply = client_app(msg, context)
        reply.content["debug"] = ConfigRecord({"worst-shopper": user})
        return reply

    grid, policy = _one_round(tmp_path, audit_sites, leaky_app)
    with pytest.raises(MessageAuditError, match=rf"ConfigRecord 'debug' holds id\(s\) \['{user}'\]"):
        audit_replies(grid.sent, policy)


def test_audit_catches_a_user_id_in_the_site_name(tmp_path, audit_sites):
    user, _ = _site_ids(audit_sites)
    real_reply = client_module._reply
    patched = {"ok": False}

    def reply_with_id(msg, content, site):
        patched["ok"] = True
        return real_reply(msg, content, f"{site}/{user}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "_reply", reply_with_id)
        grid, policy = _one_round(tmp_path, audit_sites)
    assert patched["ok"]
    with pytest.raises(MessageAuditError, match=rf"'site' holds id\(s\) \['{user}'\]"):
        audit_replies(grid.sent, policy)


@pytest.mark.parametrize("how", ["metric-name", "metric-value"])
def test_audit_catches_ids_in_metrics(tmp_path, audit_sites, how):
    user, item = _site_ids(audit_sites)
    real = client_module.to_metric_record

    def leaky_metrics(metrics):
        extra = ({f"top-user-{user}": 1.0} if how == "metric-name"
                 else {"budget": float(item)})  # a listed name carrying an item id
        return real({**metrics, **extra})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "to_metric_record", leaky_metrics)
        grid, policy = _one_round(tmp_path, audit_sites)
    expected = (rf"metric 'top-user-{user}' is not in SITE_METRICS" if how == "metric-name"
                else rf"\['budget'\] = {float(item)!r} is an id \['{item}'\]")
    with pytest.raises(MessageAuditError, match=expected):
        audit_replies(grid.sent, policy)


def test_audit_catches_per_shopper_values_and_ids_in_arrays(tmp_path, audit_sites):
    user, item = _site_ids(audit_sites)

    def leaky_app(msg, context):
        reply = client_app(msg, context)
        if msg.metadata.message_type == SCORE_QUERY:
            # per-shopper values instead of bin counts, and user ids as numbers
            per_shopper = np.arange(60, dtype=np.float64)
            reply.content[message_keys.HISTOGRAMS] = ArrayRecord(
                {message_keys.SCORE_HIST: Array.from_numpy_ndarray(per_shopper)})
            reply.content["debug"] = ArrayRecord(
                {"user-ids": Array.from_numpy_ndarray(np.array([float(user)]))})
        if message_keys.ARRAYS in reply.content:  # an item id packed into the bytes of a model array
            arrays = {k: a.numpy() for k, a in reply.content[message_keys.ARRAYS].items()}
            first = next(iter(arrays))
            raw = bytearray(arrays[first].tobytes())
            raw[:len(item)] = item.encode()
            arrays[first] = np.frombuffer(bytes(raw), dtype=arrays[first].dtype).reshape(
                arrays[first].shape)
            reply.content[message_keys.ARRAYS] = ArrayRecord(
                {k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})
        return reply

    # the server may fail on the bogus histogram: the replies were recorded before that
    grid, policy = _one_round(tmp_path, audit_sites, leaky_app, may_fail=True)
    with pytest.raises(MessageAuditError) as err:
        audit_replies(grid.sent, policy)
    text = str(err.value)
    assert ("score_summary reply 'histograms'['score-histogram']: shape (60,), expected "
            f"({TREE_SIZE},)") in text
    assert f"train reply 'arrays'['{first_name(policy)}']: raw bytes hold id(s) ['{item}']" in text
    assert "records ['debug'] are not allowed" in text
    assert f"'debug'['user-ids']: holds id value(s) ['{user}']" in text


def first_name(policy: ReplyPolicy) -> str:
    return next(iter(policy.param_shapes))


def test_a_site_error_reaches_the_server_without_ids_or_paths(tmp_path, audit_sites):
    """Flower sends an exception's text to the server; a data error may quote an id or a path,
    so the ClientApp replaces it by the error type (the full error stays in the site's log)."""
    secret = "shopper-u98765"
    missing = tmp_path / f"{secret}.parquet"
    cfg = tiny_run_config(tmp_path, audit_sites, **{"num-rounds": 1, "dp": False})
    nodes = {101: {"data-path": str(missing), "site-name": "site-x", "require-dp": False}}
    with pytest.raises(client_module.SiteError) as info:
        _run(cfg, nodes)
    assert secret not in str(info.value) and str(missing) not in str(info.value)
    assert "train failed at the site" in str(info.value)
    assert secret in str(info.value.__cause__)  # kept for the site's own log
