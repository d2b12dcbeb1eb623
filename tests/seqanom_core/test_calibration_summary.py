"""Federated calibration from noisy site histograms matches the pooled exact calibration."""

from __future__ import annotations

import numpy as np

from seqanom_core.calibration_summary import (
    calibrator_from_histograms,
    score_histogram,
    stat_histograms,
    threshold_from_histogram,
)


def test_pooled_noisy_histograms_approximate_median_scale_and_threshold():
    rng = np.random.default_rng(0)
    stats = np.abs(rng.normal(3.0, 0.5, size=(600, 13)))
    stats[:, -1] -= 4.5  # a difference statistic (the order one) lives below zero
    hist = sum(stat_histograms(stats[i::3], 0.5, seed=i) for i in range(3))
    cal = calibrator_from_histograms(hist, total=600)
    assert np.allclose(cal.center, np.median(stats, axis=0), atol=0.15)
    assert np.all((cal.scale > 0.3) & (cal.scale < 0.8))
    scores = rng.normal(0.0, 1.0, size=800)
    shist = sum(score_histogram(scores[i::4], 0.5, seed=i) for i in range(4))
    thr = threshold_from_histogram(shist, 0.05, total=800)
    assert abs(np.mean(scores > thr) - 0.05) < 0.02
    # the noise is really there: two seeds give different histograms
    assert not np.array_equal(score_histogram(scores, 0.5, 1), score_histogram(scores, 0.5, 2))
