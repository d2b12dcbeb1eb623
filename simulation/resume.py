"""Continuing a simulation that was stopped or killed (``seqanom simulate --resume``).

``RUN_DIR/simulation.json`` (``run.write_state``) holds the run's settings, its Flower run id,
partition and ingest summaries; it is complete once every site's files are. The federation
continues after its latest complete checkpoint (the server's ``resume``) as the same Flower run,
so each site's ledger sees one run: its training count is released once, its calibration
reservation is kept, and every round is accounted. The baselines and the report then run as in
``run.simulate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError
from seqanom_core.ingest import read_events
from seqanom_core.labels import read_labels
from server.checkpoints import list_checkpoints
from simulation.federation import Placement
from simulation.run import STATE_FILE, STATE_VERSION, SimulationConfig, federate_and_report

log = logging.getLogger(__name__)


def resume(out: Path, placement: Placement | None = None) -> dict[str, Any]:
    """Continue the simulation in ``out`` that was stopped or killed: its sites, ledgers and
    checkpoints are kept, the federation continues after its latest complete checkpoint as the
    same Flower run (so each site's ledger sees one run), then the baselines and the report run
    as in ``simulate``. ``placement``: where the sites run this time (not a setting of the run,
    so not stored). Returns the metrics written to ``RUN_DIR/metrics.json``."""
    t0 = time.time()
    cfg, state = read_state(out)
    trains, tests = [], []
    for k in range(cfg.sites):
        d = out / "sites" / f"site-{k}"
        trains.append(read_events(d / "train.parquet", "seqanom")[0])
        tests.append(read_events(d / "test.parquet", "seqanom")[0])
    labels = read_labels(out / "test_labels.csv")
    done = len(list_checkpoints(out / "checkpoints"))
    log.info("resuming the simulation in %s after %d complete round(s) of %d", out, done,
             cfg.rounds)
    return federate_and_report(cfg, state, trains, tests, labels, t0, resumed_after=done,
                               placement=placement)


def read_state(out: Path) -> tuple[SimulationConfig, dict[str, Any]]:
    """The settings and state of the simulation in ``out`` (ConfigError when there is none that
    can be resumed)."""
    path = out / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no simulation to resume there (it is written once every "
                          "site's files are complete; start a new simulation instead)")
    try:
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"version {state.get('version')!r}, not {STATE_VERSION}")
        if state.get("sites_complete") is not True:
            raise ConfigError(f"{out}: the simulation was stopped before its sites' files were "
                              "complete; start a new simulation instead")
        given = dict(state["config"])
        fields = {f.name for f in dataclasses.fields(SimulationConfig)}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(f"unknown settings {', '.join(unknown)}")
        for k in ("data", "quarantine"):
            given[k] = None if given.get(k) is None else Path(given[k])
        given["out"] = out
        given.setdefault("item_states", "basic")  # a simulation from before the setting
        cfg = SimulationConfig(**given)
        run_id = int(state["run_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a simulation state seqanom can resume ({err})") from None
    missing = [str(out / "sites" / f"site-{k}" / name) for k in range(cfg.sites)
               for name in ("train.parquet", "test.parquet")
               if not (out / "sites" / f"site-{k}" / name).is_file()]
    if missing or not (out / "test_labels.csv").is_file():
        raise ConfigError(f"{out}: the simulation's site files are incomplete "
                          f"({(missing or [str(out / 'test_labels.csv')])[0]} is missing); "
                          "start a new simulation instead")
    state["run_id"] = run_id
    return cfg, state


