"""Alert thresholds calibrated to a target alert rate on held-out, normal-looking scores."""

from __future__ import annotations

import numpy as np

from seqanom_core.errors import ConfigError


def calibrate_threshold(scores: np.ndarray, alert_rate: float) -> float:
    """Threshold flagging about ``alert_rate`` of ``scores`` (``score > threshold`` is an alert).

    Uses the empirical ``1 - alert_rate`` quantile (higher interpolation), so on the calibration
    scores at most ``alert_rate`` of them lie strictly above it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 < alert_rate < 1:
        raise ConfigError(f"alert rate must be in (0, 1), not {alert_rate}")
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ConfigError("cannot calibrate a threshold on no finite scores")
    return float(np.quantile(scores, 1.0 - alert_rate, method="higher"))


def alert_rate_at(scores: np.ndarray, threshold: float) -> float:
    """Fraction of scores above ``threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores > threshold)) if scores.size else 0.0
