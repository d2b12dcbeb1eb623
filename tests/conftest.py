"""Shared fixtures: small synthetic data sets and the location of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public samples beside the repository (CI has them)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_split() -> tuple[pa.Table, pa.Table, object]:
    """(clean training events, test events with injected anomalies, labels) from the generator."""
    from seqanom_core.sequences import split_events_by_shopper
    from simulation.inject import inject_anomalies
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=400, seed=3))
    train, test_ev = split_events_by_shopper(events, 0.3, seed=3)
    test_ev, labels = inject_anomalies(test_ev, rate=0.4, seed=3,
                                       kinds=["crawler", "bot_replay", "account_takeover",
                                              "cart_stuffing"])
    return train, test_ev, labels
