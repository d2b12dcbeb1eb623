"""``flwr run .`` of this project on a loopback simulation SuperLink, as the README documents it;
and a server killed mid-run that resumes from its latest checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr_processes import flwr, start_superlink, wait_for_status, write_connection
from process_tree import descendants, free_port, stop_tree
from safetensors.numpy import load_file

pytestmark = pytest.mark.integration
CONN = "seqanom-sim"


def prepare(run_dir: Path, *extra: str) -> Path:
    """Sites and run config through the CLI (``seqanom simulate --prepare-only``)."""
    cmd = [sys.executable, "-m", "simulation.cli", "-q", "simulate", "--prepare-only",
           "--shoppers", "160", "--sites", "2", "--local-epochs", "1", "--out", str(run_dir),
           *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "flwr run . seqanom-sim" in out.stdout
    return run_dir / "run-config.toml"


def submit(home: Path, config: Path, sites: int, *extra: str) -> str:
    """``flwr run .`` (detached); returns the run id."""
    out = flwr(home, "run", ".", CONN, "--run-config", str(config), "--federation-config",
               f"num-supernodes={sites}", "--format", "json", *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    return str(json.loads(out.stdout)["run-id"])


def with_overrides(config: Path, **values: object) -> Path:
    """A copy of a run-config file with some keys replaced."""
    lines = [ln for ln in config.read_text().splitlines()
             if ln.split("=")[0].strip().strip('"') not in values]
    lines += [f'"{k}" = {json.dumps(v)}' for k, v in values.items()]
    out = config.with_name(config.stem + "-" + "-".join(values) + ".toml")
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def superlink(tmp_path):
    """A loopback simulation SuperLink with its own FLWR_HOME; stopped by pid afterwards."""
    home, port = tmp_path / "flwr-home", free_port()
    write_connection(home, CONN, port)
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = start_superlink(home, port, tmp_path / "superlink.log")
        started.append(proc)
        return proc

    try:
        yield home, start
    finally:
        for proc in started:
            stop_tree(proc)
        left = [p for proc in started for p in descendants(proc)]
        assert not left, f"processes left behind: {left}"


def test_flwr_run_completes_with_checkpoints_and_model(tmp_path, superlink):
    home, start = superlink
    config = prepare(tmp_path / "run", "--rounds", "2")
    start()
    run_id = submit(home, config, 2)
    status = wait_for_status(home, CONN, run_id, timeout=480)
    assert status["status"] == "finished:completed", status
    ckpt = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("round-*")) == ["round-0001", "round-0002"]
    rounds = [json.loads(ln)["round"] for ln in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
    ledgers = sorted((tmp_path / "run" / "ledgers").glob("site-*.json"))
    assert len(ledgers) == 2
    from seqanom_core.detector import SequenceDetector
    det = SequenceDetector.load(tmp_path / "run" / "model", progress=False)
    eps = det.metadata_["privacy"]["epsilon"]
    assert 0 < eps <= 8.0 + 1e-9


def _final_weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_server_resumes_and_ends_like_an_uninterrupted_run(tmp_path, superlink):
    """Kill the SuperLink (and the ServerApp with it) after round 1 of 3, start a new one and
    resume: same rounds as an uninterrupted run, and (without DP noise, same seeds) the same
    final model up to float summation order."""
    home, start = superlink
    ref_cfg = prepare(tmp_path / "ref", "--rounds", "3", "--no-dp")
    cut_cfg = prepare(tmp_path / "cut", "--rounds", "3", "--no-dp")
    proc = start()
    ref_id = submit(home, ref_cfg, 2)
    assert wait_for_status(home, CONN, ref_id, timeout=600)["status"] == "finished:completed"

    submit(home, cut_cfg, 2)
    first = tmp_path / "cut" / "checkpoints" / "round-0001" / "round.json"
    deadline = time.time() + 600
    while not first.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists(), "round 1 never finished"
    stop_tree(proc, sig=9)  # a crash: no clean shutdown
    done = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("round-*"))
    assert "round-0003" not in done and not (tmp_path / "cut" / "model").exists()

    start()
    resumed = submit(home, with_overrides(cut_cfg, resume=True), 2)
    assert wait_for_status(home, CONN, resumed, timeout=600)["status"] == "finished:completed"
    log = [json.loads(ln) for ln in
           (tmp_path / "cut" / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [1, 2, 3]
    ref_log = [json.loads(ln) for ln in
               (tmp_path / "ref" / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    a, b = _final_weights(tmp_path / "ref"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)
    # both calibrated their final model once (calibration noise is fresh in each run)
    assert [r["threshold"] is None for r in log] == [r["threshold"] is None for r in ref_log] \
        == [True, True, False]
