from __future__ import annotations

import numpy as np
import pytest

from seqanom_core.config import TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.schema import events_from_arrays
from seqanom_core.sequences import (
    GAP_FIRST,
    GAP_SESSION,
    ITEM_NEW,
    ITEM_REPEAT,
    ITEM_SAME,
    N_SPECIAL,
    build_sequences,
    hash_buckets,
    sequences_from_tokens,
    split_shoppers,
    vocab_sizes,
)

TOK = TokenizerConfig(category_buckets=16, session_gap_s=100, item_states="basic")


def _events():
    # shopper b's rows come first and out of time order; shopper a has a session break
    return events_from_arrays(
        user_id=["b", "a", "b", "a", "a", "a"],
        item_id=["x", "i1", "y", "i1", "i2", "i1"],
        category_id=["c1", "c1", "c2", "c1", "c2", "c1"],
        behavior=[0, 0, 3, 1, 0, 3],
        timestamp=[50.0, 0.0, 10.0, 5.0, 500.0, 501.0],
    )


def test_sequences_grouped_time_ordered_with_sessions_and_item_state():
    s = build_sequences(_events(), TOK)
    assert list(s.ids) == ["b", "a"]  # first appearance order
    assert s.lengths.tolist() == [2, 4]
    a = s.span(1)
    assert s.timestamp[a].tolist() == [0.0, 5.0, 500.0, 501.0]
    assert s.channels["gap"][a][0] == GAP_FIRST
    assert s.channels["gap"][a][2] == GAP_SESSION  # 495 s > 100 s session gap
    assert (s.channels["gap"][a][[1, 3]] != GAP_SESSION).all()  # 5 s and 1 s stay in session
    assert s.channels["item"][a].tolist() == [ITEM_NEW, ITEM_SAME, ITEM_NEW, ITEM_REPEAT]
    b = s.span(0)
    assert s.timestamp[b].tolist() == [10.0, 50.0]  # sorted by time
    ev = s.channels["event"][b]
    assert (ev[0] - N_SPECIAL) // TOK.category_buckets == 3  # the buy came first in time
    assert ev.max() < vocab_sizes(TOK, "events")["event"]


def test_rows_point_back_to_source_table():
    events = _events()
    s = build_sequences(events, TOK)
    users = np.asarray(events.column("user_id").to_pylist())
    for i, uid in enumerate(s.ids):
        assert set(users[s.rows[s.span(i)]]) == {uid}


def test_hash_buckets_stable_and_seeded():
    import pyarrow as pa

    vals = pa.array(["c1", "c2", "c1", "zz"])
    a = hash_buckets(vals, 1000, seed=0)
    assert a[0] == a[2] and 0 <= a.min() and a.max() < 1000
    assert np.array_equal(a, hash_buckets(vals, 1000, seed=0))
    assert not np.array_equal(a, hash_buckets(vals, 1000, seed=1))


def test_tokens_sequences_and_end_of_empty():
    s = sequences_from_tokens(["0", "1", "2"], [np.array([5, 5, 7]), np.array([], int), np.array([9])], TOK)
    assert s.lengths.tolist() == [3, 0, 1]
    assert s.channels["item"][:3].tolist() == [ITEM_NEW, ITEM_SAME, ITEM_NEW]
    assert s.source == "tokens"


def test_splits():
    s = build_sequences(_events(), TOK)
    with pytest.raises(ConfigError):
        split_shoppers(s, 1.5, 0)
    a, b = split_shoppers(s, 0.5, 0)
    assert sorted(list(a.ids) + list(b.ids)) == ["a", "b"]
    sub = s.subset(np.array([1]))
    assert sub.ids.tolist() == ["a"] and sub.n_events == 4


def test_shuffle_within_reorders_each_sequence_but_keeps_timing():
    from seqanom_core.sequences import shuffle_within

    s = build_sequences(_events(), TOK)
    a, b = shuffle_within(s, seed=3), shuffle_within(s, seed=3)
    assert np.array_equal(a.channels["event"], b.channels["event"])  # seeded
    assert np.array_equal(a.channels["gap"], s.channels["gap"])  # timing stays in place
    for i in range(len(s)):
        sl = s.span(i)
        for c in ("event", "item"):
            assert sorted(a.channels[c][sl]) == sorted(s.channels[c][sl])  # same events, own shopper
    many = [shuffle_within(s, seed=k).channels["event"] for k in range(20)]
    assert any(not np.array_equal(m, s.channels["event"]) for m in many)


def test_a_sequences_reordering_does_not_depend_on_the_other_sequences():
    # the order reference of a shopper must not change with the file's other shoppers or their
    # order (it did: one random draw ran over all events of the file)
    from seqanom_core.sequences import shuffle_within

    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 50, size=int(n)) for n in rng.integers(1, 30, size=40)]
    s = sequences_from_tokens([str(i) for i in range(40)], tokens, TOK)
    full = shuffle_within(s, seed=1)
    for index in (np.arange(40)[::-1], np.array([7]), rng.permutation(40)[:13]):
        part = shuffle_within(s.subset(index), seed=1)
        for j, i in enumerate(index):
            assert np.array_equal(part.channels["event"][part.span(j)],
                                  full.channels["event"][full.span(int(i))])
    other = shuffle_within(s, seed=2)
    assert not np.array_equal(other.channels["event"], full.channels["event"])  # seed matters


def test_split_by_id_moves_no_other_shopper_when_one_is_removed():
    from seqanom_core.sequences import split_shoppers_by_id

    n = 60
    s = build_sequences(events_from_arrays(
        user_id=[f"u{k}" for k in range(n)], item_id=["x"] * n, category_id=["c"] * n,
        behavior=[0] * n, timestamp=[float(k) for k in range(n)]), TokenizerConfig())
    a, b = split_shoppers_by_id(s, 0.3, 7)
    assert len(a) + len(b) == len(s) and not set(a.ids) & set(b.ids)
    assert 0.1 < len(b) / len(s) < 0.5
    drop = s.ids[0]
    a2, b2 = split_shoppers_by_id(s.subset(np.arange(1, len(s))), 0.3, 7)
    assert set(a2.ids) == set(a.ids) - {drop} and set(b2.ids) == set(b.ids) - {drop}
    a3, _ = split_shoppers_by_id(s, 0.3, 8)
    assert set(a3.ids) != set(a.ids)  # the seed matters
