"""The ``item:funnel`` statistic of models with funnel item states (issue 19, deliverable 3): which
events are funnel regressions, what the statistic sums, live == batch, and model directories
(basic, or funnel from before the statistic) scoring as before."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from live_helpers import live_events, prefix_table

from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import SequenceDetector, make_detector
from seqanom_core.inference import funnel_buckets, funnel_regressions
from seqanom_core.live.engine import LiveScorer
from seqanom_core.schema import BEHAVIOR_CODE, events_from_arrays
from seqanom_core.scoring import ScoreCalibrator, stat_names
from seqanom_core.sequences import build_sequences, vocab_sizes
from seqanom_core.supervised import SupervisedHead

BASIC, FUNNEL = TokenizerConfig(item_states="basic"), TokenizerConfig(item_states="funnel")
VIEW, CART, FAV, BUY = (BEHAVIOR_CODE[b] for b in ("view", "cart", "fav", "buy"))


def _shoppers(rows: dict[str, list[tuple[str, int]]]) -> pa.Table:
    users, items, behaviors, ts = [], [], [], []
    for user, events in rows.items():
        for k, (item, behavior) in enumerate(events):
            users += [user]
            items += [item]
            behaviors += [behavior]
            ts += [float(k)]
    return events_from_arrays(users, items, ["c"] * len(users), behaviors, ts)


def _flags(table: pa.Table) -> dict[str, list[bool]]:
    s = build_sequences(table, FUNNEL)
    buckets = funnel_buckets(vocab_sizes(FUNNEL, "events"))
    assert buckets == FUNNEL.category_buckets
    flags = funnel_regressions(s.channels["event"], s.channels["item"], buckets)
    return {str(u): flags[s.span(i)].tolist() for i, u in enumerate(s.ids)}


def test_a_regression_is_an_event_below_the_stage_already_reached_on_its_item():
    table = _shoppers({
        "forward": [("a", VIEW), ("a", VIEW), ("a", CART), ("a", BUY), ("b", VIEW)],
        "reversed": [("a", BUY), ("a", CART), ("a", VIEW), ("b", FAV), ("b", VIEW)],
        "rebuy": [("a", VIEW), ("a", BUY), ("a", BUY), ("b", CART), ("b", FAV)],
    })
    flags = _flags(table)
    assert flags["forward"] == [False] * 5
    # a cart and a view of an item already bought, a view of an item already faved
    assert flags["reversed"] == [False, True, True, False, True]
    # buying again, or faving an item carted (same stage), goes nowhere back
    assert flags["rebuy"] == [False] * 5


def test_only_funnel_models_of_shopper_events_have_the_statistic():
    assert funnel_buckets(vocab_sizes(BASIC, "events")) is None
    assert funnel_buckets(vocab_sizes(FUNNEL, "tokens")) is None  # tokens: always basic states
    assert stat_names(funnel=True) == [*stat_names(), "item:funnel"]


@pytest.fixture(scope="module")
def funnel_detector(small_split):
    train, _, _ = small_split
    return make_detector("transformer", model_config=ModelConfig(
        d_model=32, n_layers=1, n_heads=2, max_len=16), tokenizer_config=FUNNEL,
        train_config=TrainConfig(epochs=1, seed=0), progress=False).fit(train)


def test_the_statistic_is_the_item_surprise_of_the_regressions_per_event(funnel_detector,
                                                                       small_split):
    _, test, _ = small_split
    scored = funnel_detector.score_shoppers(test)
    assert funnel_detector.calibrator_.names == stat_names(funnel=True)
    assert scored.stats.shape[1] == len(stat_names(funnel=True))
    ev, seqs = scored.events, scored.sequences
    flags = funnel_regressions(seqs.channels["event"], seqs.channels["item"],
                               FUNNEL.category_buckets)
    assert flags.any() and not flags.all()
    for i in range(len(seqs)):
        a, b = int(seqs.offsets[i]), int(seqs.offsets[i + 1])
        item_nll = ev.nll["item"][ev.offsets[i]:ev.offsets[i] + (b - a)].astype(np.float64)
        expected = float((item_nll * flags[a:b]).sum()) / (b - a)
        assert scored.stats[i, -1] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_the_live_score_of_a_funnel_model_equals_the_batch_score(funnel_detector, small_split):
    _, test, _ = small_split
    users = list(dict.fromkeys(test.column("user_id").to_pylist()))[:20]
    events = live_events(test.filter(pa.compute.is_in(test.column("user_id"), pa.array(users))))
    live = LiveScorer(funnel_detector)
    results = [r for k in range(0, len(events), 5) for r in live.score(events[k:k + 5])]
    table, _ = prefix_table(events)
    batch = funnel_detector.score_shoppers(build_sequences(table, FUNNEL))
    expected = dict(zip(batch.ids.tolist(), batch.scores.tolist(), strict=True))
    seen: dict[str, int] = {}
    diffs = []
    for e, r in zip(events, results, strict=True):
        seen[e.user_id] = seen.get(e.user_id, 0) + 1
        diffs.append(abs(r["score"] - expected[f"{e.user_id}#{seen[e.user_id]}"]))
    assert max(diffs) < 1e-4, f"largest difference {max(diffs)}"
    drivers = {r["driver"] for r in results}
    assert drivers <= set(stat_names(funnel=True))


def test_a_funnel_directory_from_before_the_statistic_scores_on_its_ten(funnel_detector,
                                                                        small_split, tmp_path):
    _, test, _ = small_split
    funnel_detector.save(tmp_path / "m")
    cal_path = tmp_path / "m" / "calibration.json"
    cal = json.loads(cal_path.read_text())
    assert cal["stats"][-1] == "item:funnel"
    for key in ("stats", "center", "scale"):  # as written before item:funnel existed
        cal[key] = cal[key][:-1]
    cal_path.write_text(json.dumps(cal))
    old = SequenceDetector.load(tmp_path / "m", progress=False)
    assert old.calibrator_.names == stat_names()
    scored = old.score_shoppers(test)
    ten = ScoreCalibrator(funnel_detector.calibrator_.center[:-1],
                          funnel_detector.calibrator_.scale[:-1])
    assert np.allclose(scored.scores, ten.score(scored.stats[:, :-1])[0])
    assert set(scored.driver) <= set(stat_names())
    with pytest.raises(ValueError, match="statistics per shopper"):
        funnel_detector.calibrator_.standardise(scored.stats[:, :-2])


def test_a_head_reads_either_feature_list():
    for funnel in (False, True):
        n = 1 + len(stat_names(funnel))
        head = SupervisedHead(np.linspace(1, 0, n), 0.5)
        again = SupervisedHead.from_dict(json.loads(json.dumps(head.to_dict())))
        assert again.to_dict()["features"] == ["score", *stat_names(funnel)]
        assert np.array_equal(again.weights, head.weights)
    bad = SupervisedHead(np.ones(3), 0.0).to_dict() | {"features": ["score", "event:mean"]}
    with pytest.raises(ValueError, match="features do not match"):
        SupervisedHead.from_dict(bad)
