"""Federated calibration of scores and threshold from site histograms (nothing per shopper).

A global model needs what ``ScoreCalibrator`` and ``calibrate_threshold`` compute on one site's
held-out normal shoppers: a robust centre and scale per shopper statistic, and the score above
which the target fraction of normal shoppers lies. Across sites this is done from summaries:

1. each site scores its held-out validation shoppers with the global model and sends, per
   statistic, a histogram over fixed bins (``STAT_EDGES``) with Gaussian noise added to every
   count; the server sums them and takes median, MAD (from the quartiles) and standard deviation
   from the pooled histogram;
2. each site then sends a noisy histogram of its shoppers' scores under that calibration
   (``SCORE_EDGES``); the server takes the ``1 - alert_rate`` quantile of the pooled histogram.

Bins are fixed in advance and identical everywhere, so a histogram carries only counts. The noise
(``noise_std`` counts per bin) hides whether one shopper is in a bin; it is not accounted as
differential privacy: the epsilon a site reports covers its model updates only.
"""

from __future__ import annotations

import numpy as np

from seqanom_core.errors import ConfigError
from seqanom_core.scoring import ScoreCalibrator

STAT_EDGES = np.linspace(-8.0, 24.0, 129)  # nats (order statistic: a difference, can be < 0); 0.25 wide; values outside are clipped in
SCORE_EDGES = np.linspace(-5.0, 25.0, 121)  # standardised scores; 0.25 wide


def noisy_histogram(
    values: np.ndarray, edges: np.ndarray, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Counts of ``values`` (clipped into the edges' range) per bin, plus N(0, noise_std²) noise."""
    v = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    out = counts.astype(np.float64)
    if noise_std > 0:
        out += rng.normal(0.0, noise_std, size=out.shape)
    return out


def stat_histograms(stats: np.ndarray, noise_std: float, seed: int) -> np.ndarray:
    """Noisy histogram of every statistic: ``(n_stats, len(STAT_EDGES) - 1)`` from ``(n, n_stats)``."""
    rng = np.random.default_rng(seed)
    return np.stack([noisy_histogram(stats[:, j], STAT_EDGES, noise_std, rng)
                     for j in range(stats.shape[1])])


def score_histogram(scores: np.ndarray, noise_std: float, seed: int) -> np.ndarray:
    """Noisy histogram of shopper scores over ``SCORE_EDGES``."""
    return noisy_histogram(scores, SCORE_EDGES, noise_std, np.random.default_rng(seed))


def _cdf(counts: np.ndarray, total: float | None = None) -> np.ndarray:
    """Monotone CDF of a noisy histogram: cumulative sums of the raw counts (zero-mean noise
    cancels in sums; clipping each bin at 0 would add a positive bias in every empty bin).
    ``total`` is the known number of shoppers (default: the noisy sum of the counts)."""
    total = float(np.sum(counts)) if total is None else float(total)
    if total <= 0:
        raise ConfigError("pooled histogram is empty: no site sent usable calibration counts")
    cdf = np.clip(np.cumsum(counts) / total, 0.0, 1.0)
    return np.maximum.accumulate(cdf)


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float, total: float | None) -> float:
    """Quantile ``q`` of a noisy histogram, linear within the bin."""
    cdf = _cdf(counts, total)
    i = int(np.searchsorted(cdf, q, side="left"))
    i = min(i, len(cdf) - 1)
    prev = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if cdf[i] == prev else (q - prev) / (cdf[i] - prev)
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def calibrator_from_histograms(hist: np.ndarray, total: float | None = None) -> ScoreCalibrator:
    """A ScoreCalibrator from pooled per-statistic histograms (same scale rule as ``fit``).

    ``total``: the number of shoppers behind the histograms, when known."""
    centers, scales = [], []
    mids = (STAT_EDGES[:-1] + STAT_EDGES[1:]) / 2
    for h in np.asarray(hist, dtype=np.float64):
        med = _quantile(h, STAT_EDGES, 0.5, total)
        mad = (_quantile(h, STAT_EDGES, 0.75, total) - _quantile(h, STAT_EDGES, 0.25, total)) / 2 * 1.4826
        p = np.diff(np.concatenate([[0.0], _cdf(h, total)]))  # bin probabilities, non-negative
        # noise in empty bins far from the data would dominate the variance: keep the bins
        # between the 0.5% and 99.5% quantiles
        lo = int(np.searchsorted(STAT_EDGES, _quantile(h, STAT_EDGES, 0.005, total), side="right")) - 1
        hi = int(np.searchsorted(STAT_EDGES, _quantile(h, STAT_EDGES, 0.995, total), side="left"))
        p = np.where((np.arange(len(p)) >= lo) & (np.arange(len(p)) < hi), p, 0.0)
        p = p / max(p.sum(), 1e-12)
        mean = float((p * mids).sum())
        std = float(np.sqrt((p * (mids - mean) ** 2).sum()))
        centers.append(med)
        scales.append(max(mad, 0.5 * std, 1e-3))
    return ScoreCalibrator(np.asarray(centers), np.asarray(scales))


def threshold_from_histogram(hist: np.ndarray, alert_rate: float,
                             total: float | None = None) -> float:
    """Score threshold flagging about ``alert_rate`` of the pooled shoppers."""
    if not 0 < alert_rate < 1:
        raise ConfigError(f"alert rate must be in (0, 1), not {alert_rate}")
    return _quantile(np.asarray(hist, dtype=np.float64), SCORE_EDGES, 1.0 - alert_rate, total)
