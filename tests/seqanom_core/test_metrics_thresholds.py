from __future__ import annotations

import numpy as np
import pytest

from seqanom_core.errors import ConfigError
from seqanom_core.metrics import (
    auprc,
    auroc,
    auroc_per_kind,
    best_f1,
    detection_report,
    precision_at_k,
    precision_recall_f1,
    recall_per_kind,
)
from seqanom_core.thresholds import alert_rate_at, calibrate_threshold


def test_threshold_hits_alert_rate():
    scores = np.random.default_rng(0).normal(size=10_000)
    t = calibrate_threshold(scores, 0.05)
    assert 0.045 <= alert_rate_at(scores, t) <= 0.05
    with pytest.raises(ConfigError):
        calibrate_threshold(scores, 0)
    with pytest.raises(ConfigError):
        calibrate_threshold(np.array([np.nan]), 0.1)


def test_tied_scores_at_the_quantile_are_flagged_when_that_is_closer_to_the_target():
    # 60 calibration scores, 4 tied at the top: flagging none gives 0%, all 4 gives 6.7% (5% asked)
    scores = np.r_[np.linspace(0.0, 1.0, 56), [2.0] * 4]
    t = calibrate_threshold(scores, 0.05)
    assert 1.0 < t < 2.0 and alert_rate_at(scores, t) == pytest.approx(4 / 60)
    # 8 tied (13%): flagging them is further from 5% than flagging none
    scores = np.r_[np.linspace(0.0, 1.0, 52), [2.0] * 8]
    assert alert_rate_at(scores, calibrate_threshold(scores, 0.05)) == 0.0


def test_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s) == pytest.approx(0.75)
    assert auprc(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert precision_at_k(y, s, 2) == 0.5
    prf = precision_recall_f1(y, s > 0.3)
    assert prf["precision"] == pytest.approx(2 / 3) and prf["recall"] == 1.0
    assert prf["false_alerts"] == 1 and prf["false_alert_rate"] == 0.5  # 0.4 of the two normals
    assert prf["alert_rate"] == 0.75
    assert best_f1(y, s)["f1"] == pytest.approx(0.8)
    kinds = ["", "", "a", "b"]
    assert recall_per_kind(kinds, s > 0.5) == {"a": 0.0, "b": 1.0}
    assert auroc_per_kind(y, s, kinds) == {"a": 0.5, "b": 1.0}
    rep = detection_report(y, s, 0.5, kinds)
    assert rep["n_anomalous"] == 2 and rep["at_threshold"]["recall"] == 0.5
    with pytest.raises(ConfigError):
        auroc(y, np.array([0, np.nan, 1, 1]))


def test_recall_at_low_false_positive_rates():
    from seqanom_core.metrics import recall_at_fpr

    normal = np.arange(1000, dtype=float)
    anomalous = np.array([999.5, 998.5, 990.5, 500.0])
    y = np.r_[np.zeros(1000), np.ones(4)]
    s = np.r_[normal, anomalous]
    got = recall_at_fpr(y, s)
    # 0.1%: 1 normal may be above the threshold (998), 0.2%: 2 (997), 1%: 10 (989)
    assert got == {"0.1%": 0.5, "0.2%": 0.5, "1%": 0.75}
    for f, thr in ((0.001, 998), (0.002, 997), (0.01, 989)):
        assert (normal > thr).sum() <= int(f * 1000)
    assert np.isnan(recall_at_fpr(np.zeros(5), np.arange(5.0))["1%"])
