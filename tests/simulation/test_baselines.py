"""Tests of the aggregate and sequence-detector baselines and their evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqanom_core.config import ModelConfig, TrainConfig
from seqanom_core.errors import ConfigError
from seqanom_core.schema import events_from_arrays
from seqanom_core.sequences import split_events_by_shopper
from simulation.baselines import (
    AGGREGATE_NAMES,
    detector_scores,
    evaluate_scores,
    isolation_forest_scores,
    shopper_aggregates,
)
from simulation.inject import inject_anomalies
from simulation.synth import SynthConfig, synthesize_events


@pytest.fixture(scope="module")
def split() -> tuple[pa.Table, pa.Table, pd.DataFrame]:
    """(clean train events, test events with crawlers and click farms, labels)."""
    events = synthesize_events(SynthConfig(n_shoppers=300, seed=21))
    train, test = split_events_by_shopper(events, 0.4, seed=21)
    test, labels = inject_anomalies(test, rate=0.3, kinds=["crawler", "click_farm"], seed=21)
    return train, test, labels


def test_aggregates_shape_and_values(split: tuple) -> None:
    train, _, _ = split
    ids, x, names = shopper_aggregates(train)
    assert names == list(AGGREGATE_NAMES)
    assert 10 <= x.shape[1] <= 14
    assert x.shape == (ids.size, len(names))
    assert list(ids) == sorted(ids)
    assert ids.size == len(set(train.column("user_id").to_pylist()))
    assert np.isfinite(x).all()
    col = {n: x[:, i] for i, n in enumerate(names)}
    for name in ("frac_cart", "frac_buy", "distinct_items_per_event", "category_switch_rate",
                 "frac_gaps_under_2s", "repeat_item_rate", "sessions_per_event"):
        assert ((col[name] >= 0) & (col[name] <= 1)).all(), name


def test_aggregates_hand_checked() -> None:
    # shopper a: view x (t=0), view x (t=1), buy y (t=4000, new session, other category)
    # shopper b: one event (no gaps: gap statistics are 0)
    ev = events_from_arrays(["a", "b", "a", "a"], ["x", "z", "x", "y"], ["c1", "c1", "c1", "c2"],
                            [0, 0, 0, 3], [1.0, 50.0, 0.0, 4000.0])
    ids, x, names = shopper_aggregates(ev)
    assert list(ids) == ["a", "b"]
    a = dict(zip(names, x[0], strict=True))
    assert a["log_events"] == pytest.approx(np.log(3))
    assert a["frac_buy"] == pytest.approx(1 / 3)
    assert a["distinct_items_per_event"] == pytest.approx(2 / 3)
    assert a["frac_gaps_under_2s"] == pytest.approx(0.5)
    assert a["category_switch_rate"] == pytest.approx(0.5)
    assert a["repeat_item_rate"] == pytest.approx(0.5)
    assert a["sessions_per_event"] == pytest.approx(2 / 3)
    assert a["median_log_gap"] == pytest.approx(np.median(np.log1p([1.0, 3999.0])))
    b = dict(zip(names, x[1], strict=True))
    assert b["std_log_gap"] == 0 and b["sessions_per_event"] == 1


def test_isolation_forest_separates_crawlers_and_click_farms(split: tuple) -> None:
    train, test, labels = split
    ids, scores = isolation_forest_scores(train, test, seed=0)
    assert np.isfinite(scores).all()
    result = evaluate_scores(ids, scores, labels)
    assert result["auroc"] > 0.8
    assert set(result["auroc_per_kind"]) == {"crawler", "click_farm"}
    again = isolation_forest_scores(train, test, seed=0)[1]
    np.testing.assert_array_equal(scores, again)


def test_evaluate_scores() -> None:
    labels = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4", "u5"],
                           "is_anomalous": [0, 0, 1, 1, 0],
                           "kind": ["", "", "crawler", "shuffle", ""]})
    r = evaluate_scores(np.array(["u4", "u3", "u2", "u1"]), np.array([0.9, 0.8, 0.1, 0.2]), labels)
    assert r["n"] == 4 and r["n_anomalous"] == 2
    assert r["auroc"] == 1.0 and r["auprc"] == pytest.approx(1.0)
    assert r["precision_at_k"] == 1.0
    assert r["auroc_per_kind"] == {"crawler": 1.0, "shuffle": 1.0}
    with pytest.raises(ConfigError, match="not in labels"):
        evaluate_scores(np.array(["u1", "zz"]), np.array([0.1, 0.2]), labels)
    with pytest.raises(ConfigError, match="ids"):
        evaluate_scores(np.array(["u1"]), np.array([0.1, 0.2]), labels)


def test_detector_scores_tiny_model(split: tuple) -> None:
    train, test, labels = split
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=32)
    ids, scores, info = detector_scores(train, test, model=model,
                                        train=TrainConfig(epochs=1, device="cpu"))
    assert list(ids) == sorted(set(test.column("user_id").to_pylist()))
    assert scores.shape == ids.shape and np.isfinite(scores).all()
    assert info["dp"] is False and info["epsilon"] is None and info["delta"] is None
    assert 0 <= evaluate_scores(ids, scores, labels)["auroc"] <= 1
