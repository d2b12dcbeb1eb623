from __future__ import annotations

import numpy as np

from seqanom_core.inference import EventScores
from seqanom_core.scoring import ScoreCalibrator, shopper_statistics, stat_names


def _scores(event_nll, offsets, shuffled=None):
    n = len(event_nll)
    nll = {"event": np.asarray(event_nll, np.float32), "gap": np.zeros(n, np.float32),
           "item": np.zeros(n, np.float32)}
    z = np.zeros(n, np.float32)
    return EventScores(np.asarray(offsets), nll, np.zeros(n, np.int64), z, z,
                       None if shuffled is None else np.asarray(shuffled, np.float32))


def test_statistics_mean_window_end_and_order():
    # shopper 0: 3 events + end; shopper 1: 10 events + end with a burst of surprise
    ev0 = [1.0, 1.0, 1.0, 5.0]
    ev1 = [1.0] * 3 + [9.0] * 8 + [0.5]
    sc = _scores(ev0 + ev1, [0, 4, 16], shuffled=[3.0] * 4 + [1.0] * 12)
    st = shopper_statistics(sc)
    names = stat_names()
    col = {n: st[:, i] for i, n in enumerate(names)}
    assert st.shape == (2, len(names))
    assert np.allclose(col["event:mean"], [2.0, np.mean(ev1)])
    assert np.allclose(col["event:window"], [2.0, 9.0])  # whole mean when shorter than the window
    assert np.allclose(col["end:nll"], [5.0, 0.5])
    # order: own order is 1 nat/event more likely than shuffled for shopper 0, less for shopper 1
    assert np.allclose(col["order:event"], [2.0 - 3.0, np.mean(ev1) - 1.0])


def test_order_statistic_is_zero_without_reorderings_and_calibration_round_trips():
    sc = _scores([1.0, 2.0, 3.0, 4.0], [0, 2, 4])
    st = shopper_statistics(sc)
    assert np.all(st[:, stat_names().index("order:event")] == 0)
    cal = ScoreCalibrator().fit(st)
    again = ScoreCalibrator.from_dict(cal.to_dict())
    assert np.allclose(again.score(st)[0], cal.score(st)[0])


def test_score_is_mean_of_top_k_standardised_statistics_and_old_calibrations_keep_the_max():
    n_stats = len(stat_names())
    cal = ScoreCalibrator(np.zeros(n_stats), np.ones(n_stats))
    stats = np.zeros((2, n_stats))
    stats[0, [1, 4, 7]] = [9.0, 3.0, 6.0]  # three statistics out
    stats[1, 2] = 12.0  # one statistic far out
    scores, driver = cal.score(stats)
    assert cal.top_k == 3
    assert np.allclose(scores, [6.0, 4.0])
    assert list(driver) == [1, 2]
    # a calibration written before the top-k rule (no "top_k") keeps the maximum
    old = cal.to_dict()
    del old["top_k"]
    assert np.allclose(ScoreCalibrator.from_dict(old).score(stats)[0], [9.0, 12.0])
    assert ScoreCalibrator.from_dict(cal.to_dict()).top_k == 3
