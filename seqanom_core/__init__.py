"""seqanom's detector library: read shopper event logs, train a next-event model (optionally under
DP-SGD), score and flag shoppers. No Flower here; ``seqanom_core.federation`` holds the
federation's plain logic on top of it.

The public API is ``__all__``; names load on first use, so ``import seqanom_core`` stays cheap
(torch is imported only when a detector or config is touched).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("seqanom")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "SequenceDetector": "seqanom_core.detector",
    "LSTMDetector": "seqanom_core.detector",
    "TransformerDetector": "seqanom_core.detector",
    "ShopperScores": "seqanom_core.detector",
    "make_detector": "seqanom_core.detector",
    "DetectorConfig": "seqanom_core.config",
    "DPConfig": "seqanom_core.config",
    "ModelConfig": "seqanom_core.config",
    "TokenizerConfig": "seqanom_core.config",
    "TrainConfig": "seqanom_core.config",
    "read_events": "seqanom_core.ingest",
    "read_nonempty_events": "seqanom_core.ingest",
    "read_token_sequences": "seqanom_core.ingest",
    "write_events": "seqanom_core.ingest",
    "PrivacyLedger": "seqanom_core.privacy_ledger",
    "SeqanomError": "seqanom_core.errors",
    "ConfigError": "seqanom_core.errors",
    "DataFileError": "seqanom_core.errors",
    "ModelFileError": "seqanom_core.errors",
    "NotFittedError": "seqanom_core.errors",
    "PrivacyBudgetExceeded": "seqanom_core.errors",
    "SchemaError": "seqanom_core.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqanom_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
