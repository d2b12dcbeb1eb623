"""The funnel facts of bench/funnel_order_bench.py on a log small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from bench.funnel_order_bench import funnel_facts, regressions, shopper_regression_rate


def _log() -> pa.Table:
    # a: views item 1, carts it, views it again (a regression), buys it
    # b: buys item 2, then views it (the buy came first; a regression); views item 3
    rows = [("a", "1", 0, 10), ("a", "1", 1, 20), ("a", "1", 0, 30), ("a", "1", 3, 40),
            ("b", "2", 3, 10), ("b", "2", 0, 20), ("b", "3", 0, 30)]
    user, item, beh, ts = zip(*rows, strict=True)
    return pa.table({"user_id": list(user), "item_id": list(item), "category_id": ["c"] * 7,
                     "behavior": pa.array(beh, pa.int8()), "timestamp": pa.array(ts, pa.float64())})


def test_regressions_are_events_below_the_furthest_stage_reached_on_their_item():
    user = np.array(["a", "a", "a", "a", "b", "b"])
    item = np.array([1, 1, 1, 1, 1, 1])
    stage = np.array([1, 2, 1, 3, 3, 1])
    assert regressions(user, item, stage).tolist() == [False, False, True, False, False, True]


def test_funnel_facts_and_per_shopper_rate():
    facts = funnel_facts(_log())
    assert facts["pairs_with_view_and_later_stage"] == 2
    assert facts["later_stage_first"] == 0.5  # b's item 2
    assert facts["view_after_buy"] == 0.5  # b viewed item 2 after buying it; a did not
    assert facts["first_touch_later"] == 0.3333  # of a's cart and buy and b's buy: b's buy
    assert facts["shoppers_with_regression"] == 1.0
    ids, rate = shopper_regression_rate(_log())
    assert ids.tolist() == ["a", "b"]
    assert rate.tolist() == [0.25, 1 / 3]
