"""Tests of labelled anomaly injection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIOR_CODE, check_events, events_from_arrays
from simulation.inject import ANOMALY_KINDS, ORDER_ONLY_KINDS, inject_anomalies
from simulation.synth import SynthConfig, synthesize_events

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TAOBAO = DATA / "taobao_userbehavior_users_sample.csv.gz"


@pytest.fixture(scope="module")
def events() -> pa.Table:
    """A small two-site synthetic table."""
    return synthesize_events(SynthConfig(n_shoppers=400, n_sites=2, seed=11))


@pytest.fixture(scope="module")
def injected(events: pa.Table) -> tuple[pa.Table, pd.DataFrame]:
    """The table with 40% of shoppers made anomalous."""
    return inject_anomalies(events, rate=0.4, seed=5)


def _by_user(table: pa.Table) -> dict[str, pd.DataFrame]:
    """Each shopper's rows, in table order."""
    df = table.to_pandas()
    return {u: g.reset_index(drop=True) for u, g in df.groupby("user_id", sort=False)}


def test_kinds_listed() -> None:
    assert len(ANOMALY_KINDS) >= 7 and len(set(ANOMALY_KINDS)) == len(ANOMALY_KINDS)
    assert set(ORDER_ONLY_KINDS) <= set(ANOMALY_KINDS)


def test_label_counts(events: pa.Table, injected: tuple[pa.Table, pd.DataFrame]) -> None:
    _, labels = injected
    assert list(labels.columns) == ["user_id", "is_anomalous", "kind"]
    assert len(labels) == 400 and labels["user_id"].is_unique
    assert set(labels["user_id"]) == set(events["user_id"].to_pylist())
    assert labels["is_anomalous"].sum() == 160
    counts = Counter(labels.loc[labels["is_anomalous"] == 1, "kind"])
    assert set(counts) == set(ANOMALY_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert (labels.loc[labels["is_anomalous"] == 0, "kind"] == "").all()


def test_only_chosen_shoppers_changed(
    events: pa.Table, injected: tuple[pa.Table, pd.DataFrame]
) -> None:
    out, labels = injected
    before, after = _by_user(events), _by_user(out)
    assert set(before) == set(after)
    for _, row in labels.iterrows():
        a, b = before[row.user_id], after[row.user_id]
        if row.is_anomalous:
            assert not a.equals(b), row.kind
            assert (b["site"] == a["site"].iloc[0]).all()
        else:
            assert a.equals(b)


def test_schema_and_order(injected: tuple[pa.Table, pd.DataFrame]) -> None:
    out, _ = injected
    assert check_events(out).column_names == out.column_names
    assert "site" in out.column_names
    df = out.to_pandas()
    assert (df.groupby("user_id", sort=False)["timestamp"].diff().dropna() >= 0).all()


def test_order_only_kinds_keep_multiset_and_times(
    events: pa.Table, injected: tuple[pa.Table, pd.DataFrame]
) -> None:
    out, labels = injected
    before, after = _by_user(events), _by_user(out)
    cols = ["item_id", "category_id", "behavior"]
    for _, row in labels[labels["kind"].isin(ORDER_ONLY_KINDS)].iterrows():
        a, b = before[row.user_id], after[row.user_id]
        assert Counter(map(tuple, a[cols].values)) == Counter(map(tuple, b[cols].values))
        np.testing.assert_array_equal(np.sort(a["timestamp"]), b["timestamp"])


def test_impossible_order_breaks_funnels(
    events: pa.Table, injected: tuple[pa.Table, pd.DataFrame]
) -> None:
    out, labels = injected
    after = _by_user(out)
    view = BEHAVIOR_CODE["view"]
    for u in labels.loc[labels["kind"] == "impossible_order", "user_id"]:
        df = after[u]
        for _, g in df.groupby("item_id"):
            acts = np.flatnonzero(g["behavior"].to_numpy() != view)
            views = np.flatnonzero(g["behavior"].to_numpy() == view)
            if acts.size and views.size:
                assert acts.max() < views.min()  # every action precedes the item's views


def test_kind_signatures(events: pa.Table, injected: tuple[pa.Table, pd.DataFrame]) -> None:
    out, labels = injected
    before, after = _by_user(events), _by_user(out)
    kind = dict(zip(labels["user_id"], labels["kind"], strict=True))
    buy, cart = BEHAVIOR_CODE["buy"], BEHAVIOR_CODE["cart"]
    for u, k in kind.items():
        a, b = before[u], after[u]
        if k:  # event counts stay in the normal range
            assert 4 <= len(b) <= max(len(a), 200)
        if k == "bot_replay":
            gaps = np.diff(b["timestamp"].to_numpy())
            assert ((gaps > 0) & (gaps < 1.0)).sum() >= 10
        elif k == "fraud_burst":
            assert (b["behavior"] == buy).sum() >= (a["behavior"] == buy).sum() + 1
        elif k == "cart_stuffing":
            assert (b["behavior"] == cart).sum() >= (a["behavior"] == cart).sum() + 5
        elif k == "account_takeover":
            old = set(a["category_id"])
            assert len(set(b["category_id"]) - old) >= 1
        elif k == "click_farm":
            assert b["item_id"].value_counts().iloc[0] >= 5
    items = set(events["item_id"].to_pylist())
    cats = set(events["category_id"].to_pylist())
    assert set(out["item_id"].to_pylist()) <= items
    assert set(out["category_id"].to_pylist()) <= cats


def test_reproducible_and_seed_dependent(events: pa.Table) -> None:
    a_tab, a_lab = inject_anomalies(events, rate=0.2, seed=3)
    b_tab, b_lab = inject_anomalies(events, rate=0.2, seed=3)
    assert a_tab.equals(b_tab) and a_lab.equals(b_lab)
    c_tab, c_lab = inject_anomalies(events, rate=0.2, seed=4)
    assert not (a_tab.equals(c_tab) and a_lab.equals(c_lab))


def test_explicit_users_and_kinds(events: pa.Table) -> None:
    users = events["user_id"].unique().to_pylist()[:6]
    out, labels = inject_anomalies(events, users=users, kinds=["shuffle", "crawler"], seed=0)
    chosen = labels.loc[labels["is_anomalous"] == 1]
    assert sorted(chosen["user_id"]) == sorted(users)
    assert Counter(chosen["kind"]) == {"shuffle": 3, "crawler": 3}


def test_shuffle_goes_to_shoppers_it_changes() -> None:
    # "one" has a single event and "same" repeats one event: a shuffle would change neither, so
    # they take the crawler's place and the shuffled shoppers really differ afterwards
    users = ["one", "same", "a", "b"]
    uid = ["one"] + ["same"] * 4 + ["a"] * 5 + ["b"] * 5
    ev = events_from_arrays(
        user_id=uid, item_id=["x"] + ["y"] * 4 + [f"i{k}" for k in range(10)],
        category_id=["c"] * 5 + [f"c{k % 3}" for k in range(10)], behavior=[0] * 15,
        timestamp=[float(t) for t in range(15)])
    out, labels = inject_anomalies(ev, users=users, kinds=["shuffle", "crawler"], seed=0)
    kind = dict(zip(labels["user_id"], labels["kind"], strict=True))
    assert kind["one"] == kind["same"] == "crawler"
    before, after = ev.to_pandas(), out.to_pandas()
    for u in ("a", "b"):
        assert kind[u] == "shuffle"
        assert before[before.user_id == u].item_id.tolist() != after[after.user_id == u].item_id.tolist()


def test_errors(events: pa.Table) -> None:
    with pytest.raises(ConfigError, match="crawler"):
        inject_anomalies(events, kinds=["nope"])
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            inject_anomalies(events, rate=rate)
    with pytest.raises(ConfigError):
        inject_anomalies(events, users=["not-a-user"])


def test_taobao_sample() -> None:
    if not TAOBAO.exists():
        pytest.skip(f"public data sample not found at {TAOBAO}")
    df = pd.read_csv(TAOBAO)
    code = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}
    beh = df["behavior_type"].map(lambda b: BEHAVIOR_CODE[code[b]]).to_numpy()
    table = events_from_arrays(
        df["user_id"], df["item_id"], df["category_id"], beh, df["timestamp"]
    )
    out, labels = inject_anomalies(table, rate=0.2, seed=0)
    check_events(out)
    assert "site" not in out.column_names
    assert len(labels) == df["user_id"].nunique()
    assert labels["is_anomalous"].sum() == round(0.2 * len(labels))
    normal = set(labels.loc[labels["is_anomalous"] == 0, "user_id"])
    mask_in = np.isin(table["user_id"].to_numpy(zero_copy_only=False), list(normal))
    mask_out = np.isin(out["user_id"].to_numpy(zero_copy_only=False), list(normal))
    assert table.filter(pa.array(mask_in)).equals(out.filter(pa.array(mask_out)))
