"""The server's arithmetic of the two calibration queries, over the sites' answers (no Flower here).

Query 1 pools the sites' per-statistic histograms into a ``ScoreCalibrator``; query 2 pools their
score histograms under that calibration into the threshold, with how far the histogram noise can
move it. The histograms themselves and the quantile rules: ``calibration_histograms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seqanom_core.federation.calibration_histograms import (
    calibrator_from_histograms,
    threshold_from_histogram,
    threshold_noise,
)
from seqanom_core.scoring import ScoreCalibrator


def calibration_total(training_counts: Sequence[float], validation_fraction: float,
                      all_shoppers: bool) -> float:
    """The shoppers behind the sites' calibration histograms, estimated from their released
    (noisy) training counts: each site holds out about ``validation_fraction`` of its shoppers
    for validation, and counts them alone or with its training ones (``all_shoppers``); exact
    counts are not released."""
    share = 1.0 if all_shoppers else validation_fraction
    return max(float(sum(training_counts)) * share / (1 - validation_fraction), 1.0)


def pooled_calibrator(stat_histograms: Sequence[np.ndarray],
                      total: float | None = None) -> ScoreCalibrator:
    """The calibrator from the sites' summed statistic histograms (``total``: the shoppers behind
    them, estimated; default their noisy root count)."""
    return calibrator_from_histograms(np.asarray(sum(stat_histograms)), total)


@dataclass(frozen=True)
class PooledThreshold:
    """The federated threshold and what it rests on."""

    threshold: float
    noise: float  # how far histogram noise can move its tail, as a fraction of the shoppers
    shoppers: float  # calibration shoppers behind it, all sites together (estimated or noisy root count)

    def unreliable(self, alert_rate: float) -> bool:
        """True when the noise is large against the alert rate (the alert rate may stray)."""
        return self.noise > alert_rate / 2


def pooled_threshold(score_histograms: Sequence[np.ndarray], noise_stds: Sequence[float],
                     alert_rate: float, total: float | None = None) -> PooledThreshold:
    """The threshold flagging about ``alert_rate`` of the shoppers, from the sites' summed score
    histograms (``noise_stds``: the noise each site added per count; ``total``: the shoppers
    behind them, estimated; default their noisy root count)."""
    pooled = np.asarray(sum(score_histograms))
    total = max(float(pooled[-1]) if total is None else total, 1.0)
    threshold = threshold_from_histogram(pooled, alert_rate, total)
    rms = float(np.sqrt(np.mean(np.square(noise_stds)))) if len(noise_stds) else 0.0
    return PooledThreshold(threshold, threshold_noise(rms, total, len(score_histograms)), total)
