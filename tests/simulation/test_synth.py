"""Tests of the calibrated shopper-behaviour generator."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIORS, check_events
from simulation.synth import (
    TAOBAO_BEHAVIOR_MIX,
    TAOBAO_BUY_AFTER_VIEW,
    TAOBAO_CATEGORY_SWITCH_RATE,
    TAOBAO_EVENTS_MEDIAN,
    SynthConfig,
    iter_event_batches,
    synthesize_events,
)
from simulation.synth_stats import site_category_tv, synthesis_stats


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """A 3-site synthetic table shared by the tests."""
    return synthesize_events(SynthConfig(n_shoppers=2000, n_sites=3, seed=7))


@pytest.fixture(scope="module")
def stats(table: pa.Table) -> dict:
    """Statistics of the shared table."""
    return synthesis_stats(table)


def test_deterministic_for_seed() -> None:
    cfg = SynthConfig(n_shoppers=300, n_sites=2, seed=3)
    assert synthesize_events(cfg).equals(synthesize_events(cfg))


def test_different_seeds_differ() -> None:
    a = synthesize_events(SynthConfig(n_shoppers=300, seed=1))
    b = synthesize_events(SynthConfig(n_shoppers=300, seed=2))
    assert not a.equals(b)


def test_batches_do_not_change_shape_of_output() -> None:
    t = synthesize_events(SynthConfig(n_shoppers=250, batch_size=100, seed=4))
    assert len(set(t["user_id"].to_pylist())) == 250


def test_schema_and_sites(table: pa.Table) -> None:
    assert check_events(table).column_names == table.column_names
    assert table.column_names[-1] == "site"
    assert sorted(set(table["site"].to_pylist())) == ["site-0", "site-1", "site-2"]
    assert len(set(table["user_id"].to_pylist())) == 2000
    beh = table["behavior"].to_numpy()
    assert beh.min() >= 0 and beh.max() < len(BEHAVIORS)


def test_rows_grouped_by_shopper_and_time_ordered(table: pa.Table) -> None:
    users = np.asarray(table["user_id"].to_pylist())
    ts = table["timestamp"].to_numpy()
    change = np.flatnonzero(users[1:] != users[:-1]) + 1
    assert len(change) + 1 == len(set(users))  # each shopper's rows are contiguous
    same = users[1:] == users[:-1]
    assert (np.diff(ts)[same] > 0).all()
    cfg = SynthConfig()
    assert ts.min() >= cfg.start_time and ts.max() <= cfg.start_time + cfg.days * 86400


def test_behaviour_mix_matches_taobao(stats: dict) -> None:
    for name, target in zip(BEHAVIORS, TAOBAO_BEHAVIOR_MIX, strict=True):
        assert abs(stats["behavior_mix"][name] - target) < max(0.15 * target, 0.004), name


def test_events_per_shopper(stats: dict) -> None:
    med = stats["events_per_shopper_median"]
    assert TAOBAO_EVENTS_MEDIAN / 1.5 <= med <= TAOBAO_EVENTS_MEDIAN * 1.5
    assert stats["events_per_shopper_min"] >= 4
    assert stats["events_per_shopper_max"] > 5 * med  # heavy tail


def test_sessions_and_gaps(stats: dict) -> None:
    assert 10 <= stats["sessions_per_shopper_median"] <= 22
    assert 0.2 <= stats["session_single_frac"] <= 0.45
    assert 20 <= stats["within_gap_median_s"] <= 150  # seconds to minutes
    assert 3600 <= stats["between_gap_median_s"] <= 2 * 86400  # hours to days


def test_category_structure(stats: dict) -> None:
    assert 0.6 <= stats["category_zipf_exponent"] <= 1.2
    assert abs(stats["category_switch_rate"] - TAOBAO_CATEGORY_SWITCH_RATE) < 0.08
    assert 10 <= stats["distinct_categories_per_shopper_median"] <= 32
    assert 0.15 <= stats["item_revisit_rate"] <= 0.35


def test_funnel_property(stats: dict) -> None:
    # Taobao: 52.6% of buys follow a view of the same item (the rest began before the window).
    assert stats["buy_after_view"] > 0.45
    assert abs(stats["buy_after_view"] - TAOBAO_BUY_AFTER_VIEW) < 0.07
    assert stats["buy_after_cart"] > 0.1


def test_sites_differ(table: pa.Table) -> None:
    tv = site_category_tv(table)
    assert tv > 0.05
    same = synthesize_events(
        SynthConfig(n_shoppers=2000, n_sites=3, seed=7, site_concentration=0.0)
    )
    assert site_category_tv(same) < tv


def test_stricter_site_heterogeneity_increases_distance() -> None:
    lo = synthesize_events(SynthConfig(n_shoppers=600, n_sites=2, site_concentration=5.0))
    hi = synthesize_events(SynthConfig(n_shoppers=600, n_sites=2, site_concentration=1000.0))
    assert site_category_tv(lo) > site_category_tv(hi)


def test_invalid_config() -> None:
    with pytest.raises(ConfigError):
        synthesize_events(SynthConfig(n_shoppers=0))
    with pytest.raises(ConfigError):
        synthesize_events(SynthConfig(n_items=10, n_categories=20))


def test_batches_concatenate_to_table() -> None:
    cfg = SynthConfig(n_shoppers=250, batch_size=100, seed=4)
    batches = list(iter_event_batches(cfg))
    assert len(batches) == 3
    assert pa.concat_tables(batches).combine_chunks().equals(synthesize_events(cfg))
