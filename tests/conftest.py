"""Shared fixtures: small synthetic data sets (incl. three small sites) and ../shared/data."""

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


@pytest.fixture(scope="session")
def site_dirs(tmp_path_factory) -> Path:
    """Three small synthetic sites with labelled test shoppers (site-k/train|test.parquet)."""
    import pyarrow.compute as pc

    from seqanom_core.ingest import write_events
    from seqanom_core.sequences import split_events_by_shopper
    from simulation.inject import inject_anomalies
    from simulation.synth import SynthConfig, synthesize_events

    root = tmp_path_factory.mktemp("sites")
    events = synthesize_events(SynthConfig(n_shoppers=150, n_sites=3, seed=3))
    sites = sorted(set(events.column("site").to_pylist()))
    for k, s in enumerate(sites):
        part = events.filter(pc.equal(events.column("site"), s))
        train, test = split_events_by_shopper(part, 0.3, k)
        test, labels = inject_anomalies(test, rate=0.4, seed=k)
        d = root / f"site-{k}"
        d.mkdir()
        write_events(train, d / "train.parquet")
        write_events(test, d / "test.parquet")
        labels.to_csv(d / "labels.csv", index=False)
    return root
