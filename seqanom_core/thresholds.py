"""Alert thresholds calibrated to a target alert rate on held-out, normal-looking scores."""

from __future__ import annotations

import numpy as np

from seqanom_core.errors import ConfigError


def calibrate_threshold(scores: np.ndarray, alert_rate: float) -> float:
    """Threshold flagging about ``alert_rate`` of ``scores`` (``score > threshold`` is an alert).

    Uses the empirical ``1 - alert_rate`` quantile ``v`` (higher interpolation), so on the
    calibration scores at most ``alert_rate`` of them lie strictly above it. When several
    scores tie at ``v`` (regular logs, e.g. templated token sequences, give identical scores),
    flagging none of them can undershoot the target badly (0% for 5%); the threshold then moves
    just below ``v`` if flagging the tied scores too comes closer to ``alert_rate``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 < alert_rate < 1:
        raise ConfigError(f"alert rate must be in (0, 1), not {alert_rate}")
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ConfigError("cannot calibrate a threshold on no finite scores")
    v = float(np.quantile(scores, 1.0 - alert_rate, method="higher"))
    above, at_or_above = float(np.mean(scores > v)), float(np.mean(scores >= v))
    if abs(at_or_above - alert_rate) < abs(above - alert_rate):
        lower = scores[scores < v]
        return float((lower.max() + v) / 2) if lower.size else float(np.nextafter(v, -np.inf))
    return v


def alert_rate_at(scores: np.ndarray, threshold: float) -> float:
    """Fraction of scores above ``threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores > threshold)) if scores.size else 0.0
