"""Tests of splitting events into simulated sites."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from seqanom_core.errors import ConfigError
from seqanom_core.schema import check_events
from simulation.partition import partition_events, partition_summary
from simulation.synth import SynthConfig, synthesize_events


@pytest.fixture(scope="module")
def events() -> pa.Table:
    """Three natural sites of a small synthetic table."""
    return synthesize_events(SynthConfig(n_shoppers=300, n_sites=3, seed=7))


def _users(table: pa.Table) -> set[str]:
    return set(pc.unique(table.column("user_id")).to_pylist())


def _check_parts(events: pa.Table, parts: list[pa.Table], min_shoppers: int) -> None:
    """Every shopper in exactly one site with all their events; schema kept; sites big enough."""
    seen: Counter[str] = Counter()
    for part in parts:
        assert part.schema.equals(events.schema)
        check_events(part)
        users = _users(part)
        assert len(users) >= min_shoppers
        seen.update(users)
        assert pc.count_distinct(part.column("site")).as_py() == 1
    assert set(seen) == _users(events)
    assert max(seen.values()) == 1
    assert sum(p.num_rows for p in parts) == events.num_rows
    per_user_in = Counter(events.column("user_id").to_pylist())
    per_user_out = Counter(u for p in parts for u in p.column("user_id").to_pylist())
    assert per_user_in == per_user_out


@pytest.mark.parametrize("scheme", ["natural", "iid", "dirichlet"])
def test_every_shopper_once(events: pa.Table, scheme: str) -> None:
    parts = partition_events(events, 3, scheme, seed=1, min_shoppers=20)
    assert len(parts) == 3
    _check_parts(events, parts, 20)


def test_site_names(events: pa.Table) -> None:
    iid = partition_events(events, 4, "iid", seed=0)
    assert [p.column("site")[0].as_py() for p in iid] == ["site-0", "site-1", "site-2", "site-3"]
    natural = partition_events(events, 3, "natural")
    assert [p.column("site")[0].as_py() for p in natural] == sorted(
        pc.unique(events.column("site")).to_pylist())


def test_iid_sizes_near_equal(events: pa.Table) -> None:
    sizes = [len(_users(p)) for p in partition_events(events, 4, "iid", seed=3)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_seeded_determinism(events: pa.Table, scheme: str) -> None:
    a = partition_events(events, 3, scheme, seed=5, alpha=0.3)
    b = partition_events(events, 3, scheme, seed=5, alpha=0.3)
    c = partition_events(events, 3, scheme, seed=6, alpha=0.3)
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))
    assert [_users(x) for x in a] != [_users(x) for x in c]


def test_dirichlet_skews_categories(events: pa.Table) -> None:
    def mean_tv(parts: list[pa.Table]) -> float:
        return float(np.mean([row["category_tv"] for row in partition_summary(parts)]))

    # a shopper's top category holds only part of their events, so the skew is modest
    for seed in range(3):
        iid = mean_tv(partition_events(events, 3, "iid", seed=seed))
        skewed = mean_tv(partition_events(events, 3, "dirichlet", alpha=0.1, seed=seed))
        assert skewed > iid + 0.01


def test_dirichlet_tops_up_small_sites(events: pa.Table) -> None:
    parts = partition_events(events, 5, "dirichlet", alpha=0.01, seed=4, min_shoppers=40)
    _check_parts(events, parts, 40)


def test_natural_merges_extra_values(events: pa.Table) -> None:
    parts = partition_events(events, 2, "natural", min_shoppers=20)
    _check_parts(events, parts, 20)
    names = sorted(p.column("site")[0].as_py() for p in parts)
    assert sorted("+".join(names).split("+")) == sorted(pc.unique(events.column("site")).to_pylist())


def test_natural_other_column(events: pa.Table) -> None:
    users = events.column("user_id").to_pylist()
    first_half = set(sorted(set(users))[:150])
    region = events.append_column(
        "region", pa.array(["a" if u in first_half else "b" for u in users], pa.string()))
    parts = partition_events(region, 2, "natural", site_column="region")
    assert [p.column("site")[0].as_py() for p in parts] == ["a", "b"]
    assert _users(parts[0]) == first_half


def test_partition_summary(events: pa.Table) -> None:
    parts = partition_events(events, 3, "iid", seed=0)
    rows = partition_summary(parts)
    assert [r["site"] for r in rows] == ["site-0", "site-1", "site-2"]
    assert sum(r["shoppers"] for r in rows) == 300
    assert sum(r["events"] for r in rows) == events.num_rows
    for r in rows:
        assert abs(sum(r["behavior_mix"].values()) - 1) < 1e-9
        assert 0 <= r["category_tv"] <= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_sites": 3, "scheme": "random"}, "scheme"),
        ({"n_sites": 1, "scheme": "iid"}, "n_sites"),
        ({"n_sites": 3, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"n_sites": 3, "scheme": "iid", "min_shoppers": 101}, "min_shoppers"),
        ({"n_sites": 3, "scheme": "natural", "site_column": "region"}, "region"),
        ({"n_sites": 9, "scheme": "natural"}, "only .* value"),
    ],
)
def test_errors(events: pa.Table, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        partition_events(events, **kwargs)


def test_natural_needs_two_values(events: pa.Table) -> None:
    one = events.set_column(events.column_names.index("site"), "site",
                            pa.array(["x"] * events.num_rows, pa.string()))
    with pytest.raises(ConfigError, match="'site'"):
        partition_events(one, 2, "natural")
    with pytest.raises(ConfigError, match="site"):
        partition_events(events.drop_columns(["site"]), 2, "natural")
