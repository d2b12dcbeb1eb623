"""The server's Flower records of named arrays (the plain conversions: ``seqanom_core.federation.records``)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from seqanom_core.federation.records import contiguous


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named arrays -> ArrayRecord (names and order kept)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in contiguous(arrays).items()})
