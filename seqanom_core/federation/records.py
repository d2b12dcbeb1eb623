"""Named arrays and metrics in the forms Flower's records take, for both adapters (no Flower here).

A site's or the server's model and histograms are named NumPy arrays; an adapter wraps each
``contiguous`` array in a Flower ``Array``, and reads a record back with ``as_arrays``. Metrics
travel as ``as_metrics`` floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named arrays in C order (what Flower's ``Array.from_numpy_ndarray`` serialises), order kept."""
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def as_arrays(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A record of named arrays (values with ``.numpy()``, as Flower's ``Array``) -> NumPy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def as_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Scalar metrics -> plain floats (NaN kept as NaN)."""
    return {k: float(v) for k, v in metrics.items()}
