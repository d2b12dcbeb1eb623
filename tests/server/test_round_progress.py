"""`seqanom rounds`: the central team's view of a run, read from its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fedtools import InProcessGrid, tiny_run_config
from flwr.app import Array, ArrayRecord

from client.app import app as client_app
from seqanom_core.federation import message_keys
from seqanom_core.federation.run_config import settings_from_run_config
from server.federated_run import FederatedRun
from server.round_progress import follow_rows, read_rows
from server.strategies import build_strategy
from simulation.cli import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, site_dirs) -> Path:
    """A 2-round DP run: site-1's round-1 update carries NaN (rejected), site-2 can afford one
    round only (it declines round 2)."""
    tmp = tmp_path_factory.mktemp("progress")
    cfg = tiny_run_config(tmp, site_dirs, **{"noise-multiplier": 1.0, "epsilon": 50.0})
    nodes = {101: {"partition-id": 0}, 102: {"partition-id": 1},
             103: {"partition-id": 2, "privacy-budget": 6.0}}

    def poison(nid, reply):
        if nid == 102 and message_keys.ARRAYS in reply.content and message_keys.HISTOGRAMS not in reply.content \
                and not (tmp / "poisoned").exists():
            arrays = {k: v.numpy() for k, v in reply.content[message_keys.ARRAYS].items()}
            first = next(iter(arrays))
            arrays[first] = np.full_like(arrays[first], np.nan)
            reply.content[message_keys.ARRAYS] = ArrayRecord(
                {k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})
            (tmp / "poisoned").touch()
        return reply

    grid = InProcessGrid(client_app, nodes, cfg, tamper=poison)
    s = settings_from_run_config(cfg)
    FederatedRun(grid, build_strategy(s.federation), s, "progress", Path(cfg["final-model-dir"])).run()
    return tmp / "ckpt"


def test_rows_say_who_trained_declined_or_was_rejected_and_the_worst_epsilon(finished_run):
    rows = read_rows(finished_run)
    assert [r["round"] for r in rows] == [1, 2]
    first, second = rows
    assert (first["trained"], first["declined"], first["rejected"]) == (2, 0, 1)
    assert first["rejected_sites"] == ["site-1"]
    assert (second["trained"], second["declined"], second["rejected"]) == (2, 1, 0)
    assert second["declined_sites"] == ["site-2"]
    record = json.loads((finished_run / "round-0002" / "round.json").read_text())
    # the statement covers the calibration releases after training too
    assert second["epsilon"] == record["privacy"]["epsilon"]
    assert second["epsilon"] > max(s["epsilon"] for s in record["sites"].values())
    assert 0 < first["epsilon"] < second["epsilon"] <= 50.0
    assert second["site_epsilon"] is None  # no central DP in this run
    assert first["threshold"] is None and np.isfinite(second["threshold"])  # calibrated once


def test_rounds_command_prints_a_line_per_round_and_the_guarantee(finished_run, capsys):
    assert main(["rounds", str(finished_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("2 completed round(s)") and out[1].split()[:2] == ["round", "trained"]
    assert [line.split()[0] for line in out[2:4]] == ["1", "2"]
    assert any(line.startswith("privacy: (") and "one shopper" in line for line in out)
    assert out[-1].startswith("latest model: ") and "round-0002" in out[-1]
    assert main(["rounds", str(finished_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in data["rounds"]] == [1, 2] and data["privacy"]["dp"] is True


def test_following_yields_only_rounds_completed_later(finished_run):
    later = list(follow_rows(finished_run, 0.01, seen=1, polls=2, sleep=lambda s: None))
    assert [r["round"] for r in later] == [2]


def test_missing_directory_and_damaged_record_are_one_line_errors(finished_run, tmp_path, capsys):
    assert main(["rounds", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    damaged = tmp_path / "ckpt"
    (damaged / "round-0001").mkdir(parents=True)
    (damaged / "round-0001" / "round.json").write_text("{not json")
    assert main(["rounds", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "round-0001/round.json" in err and len(err.strip().splitlines()) == 1
    assert main(["rounds", str(finished_run), "--follow", "--interval", "0"]) == 2
