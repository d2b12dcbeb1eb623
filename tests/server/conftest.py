"""An in-process Grid: the ServerApp's messages go straight to ClientApp calls (no Ray, no gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqanom_core.ingest import write_events
from seqanom_core.sequences import split_events_by_shopper
from simulation.inject import inject_anomalies
from simulation.synth import SynthConfig, synthesize_events


@pytest.fixture(scope="session")
def site_dirs(tmp_path_factory) -> Path:
    """Three small synthetic sites with labelled test shoppers (site-k/train|test.parquet)."""
    root = tmp_path_factory.mktemp("sites")
    events = synthesize_events(SynthConfig(n_shoppers=150, n_sites=3, seed=3))
    sites = sorted(set(events.column("site").to_pylist()))
    import pyarrow.compute as pc
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


