"""Conversions between the library's named NumPy arrays and Flower records (both sides use them)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named arrays -> ArrayRecord (order kept)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v))
                        for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named arrays."""
    return {k: v.numpy() for k, v in record.items()}


def to_metric_record(metrics: dict[str, float]) -> MetricRecord:
    """Scalar metrics -> MetricRecord (NaN kept as NaN floats)."""
    return MetricRecord({k: float(v) for k, v in metrics.items()})
