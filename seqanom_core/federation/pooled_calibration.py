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


def pooled_calibrator(stat_histograms: Sequence[np.ndarray],
                      shoppers: Sequence[float]) -> ScoreCalibrator:
    """The calibrator from the sites' summed statistic histograms (``shoppers``: each site's count
    of validation shoppers behind its histograms)."""
    total = sum(shoppers)
    return calibrator_from_histograms(np.asarray(sum(stat_histograms)), total or None)


@dataclass(frozen=True)
class PooledThreshold:
    """The federated threshold and what it rests on."""

    threshold: float
    noise: float  # how far histogram noise can move its tail, as a fraction of the shoppers
    shoppers: float  # validation shoppers behind it, all sites together

    def unreliable(self, alert_rate: float) -> bool:
        """True when the noise is large against the alert rate (the alert rate may stray)."""
        return self.noise > alert_rate / 2


def pooled_threshold(score_histograms: Sequence[np.ndarray], shoppers: Sequence[float],
                     alert_rate: float, noise_std: float) -> PooledThreshold:
    """The threshold flagging about ``alert_rate`` of the shoppers, from the sites' summed score
    histograms (``noise_std``: the noise each site added per count)."""
    total = sum(shoppers)
    threshold = threshold_from_histogram(np.asarray(sum(score_histograms)), alert_rate,
                                         total or None)
    return PooledThreshold(threshold, threshold_noise(noise_std, total, len(score_histograms)),
                           total)
