"""Federated calibration from noisy site histograms matches the pooled exact calibration."""

from __future__ import annotations

import numpy as np

from seqanom_core.federation.calibration_histograms import (
    calibrator_from_histograms,
    score_histogram,
    stat_histograms,
    threshold_from_histogram,
    tree_levels,
)
from seqanom_core.scoring import ScoreCalibrator


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


def test_small_sites_calibration_matches_the_exact_pooled_one():
    # 4 sites of 30 shoppers: a narrow statistic (scale 0.1), a skewed one and one where most
    # shoppers share a value; noise 0.5 per count
    rng = np.random.default_rng(1)
    n = 120
    stats = np.stack([rng.normal(2.0, 0.1, n), rng.gamma(2.0, 0.5, n),
                      np.where(rng.random(n) < 0.7, 0.0, rng.normal(1.0, 0.3, n))], axis=1)
    exact = ScoreCalibrator().fit(stats)
    for seed in range(5):
        hist = sum(stat_histograms(stats[i::4], 0.5, seed=10 * seed + i) for i in range(4))
        cal = calibrator_from_histograms(hist, total=n)
        assert np.all(np.abs(cal.center - exact.center) < 0.25 * exact.scale)
        assert np.all((cal.scale > 0.75 * exact.scale) & (cal.scale < 1.33 * exact.scale))
        scores, _ = exact.score(stats)
        shist = sum(score_histogram(scores[i::4], 0.5, seed=10 * seed + i + 5) for i in range(4))
        thr = threshold_from_histogram(shist, 0.1, total=n)
        assert abs(np.mean(scores > thr) - 0.1) < 0.05


def test_tree_histogram_levels_each_count_every_shopper_once():
    values = np.random.default_rng(2).normal(0.0, 2.0, 57)
    tree = score_histogram(values, 0.0, seed=0)
    levels = tree_levels(tree)
    assert [len(lv) for lv in levels][:3] == [1024, 512, 256] and len(levels[-1]) == 1
    assert all(lv.sum() == 57 for lv in levels)
    assert np.array_equal(levels[1], levels[0].reshape(-1, 2).sum(axis=1))


def test_threshold_noise_matches_the_spread_of_noisy_tail_quantiles():
    # the stated noise of the CDF at a tail point is what repeated noisy histograms show
    from seqanom_core.federation.calibration_histograms import (
        SCORE_EDGES,
        _cdf,
        noisy_tree_histogram,
        threshold_noise,
    )

    rng = np.random.default_rng(0)
    scores = rng.normal(size=40)
    j = int(np.searchsorted(SCORE_EDGES, np.quantile(scores, 0.9)))
    cdfs = [_cdf(noisy_tree_histogram(scores, SCORE_EDGES, 0.5, rng), total=40)[j]
            for _ in range(400)]
    stated = threshold_noise(0.5, 40)
    assert 0.5 * stated < float(np.std(cdfs)) < 1.5 * stated
    assert threshold_noise(0.5, 20) > 0.025 > threshold_noise(0.5, 200)  # vs a 5% alert rate / 2
    # four sites of 10 shoppers, each with its own noise: the pooled CDF has twice the noise
    parts = np.split(scores, 4)
    pooled = [_cdf(sum(noisy_tree_histogram(p, SCORE_EDGES, 0.5, rng) for p in parts),
                   total=40)[j] for _ in range(400)]
    stated = threshold_noise(0.5, 40, n_sites=4)
    assert stated == 2 * threshold_noise(0.5, 40)
    assert 0.5 * stated < float(np.std(pooled)) < 1.5 * stated


def test_histogram_noise_is_secret_unless_seeded_and_never_shared_between_sites():
    from seqanom_core.federation.calibration_histograms import histogram_seed, score_histogram

    assert histogram_seed(None, "site-0", 3, 0) is None
    scores = np.linspace(-1, 3, 50)
    a, b = score_histogram(scores, 0.5, None), score_histogram(scores, 0.5, None)
    assert not np.array_equal(a, b)  # from the OS: two calls differ
    seeds = {histogram_seed(7, site, r, q) for site in ("site-0", "site-1") for r in (1, 2)
             for q in (0, 1)}
    assert len(seeds) == 8  # every site, round and query its own noise
    assert histogram_seed(7, "site-0", 1, 0) == histogram_seed(7, "site-0", 1, 0)
    assert np.array_equal(score_histogram(scores, 0.5, histogram_seed(7, "a", 1, 1)),
                          score_histogram(scores, 0.5, histogram_seed(7, "a", 1, 1)))
