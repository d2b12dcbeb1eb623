"""`seqanom simulate` killed with SIGKILL: no process it started outlives it, and `--resume`
continues the run to the model an uninterrupted run ends with, within the sites' budgets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from process_tree import descendants, run_in_group, stop_tree
from safetensors.numpy import load_file

CLI = [sys.executable, "-m", "simulation.cli"]
TINY = ["--shoppers", "240", "--sites", "2", "--rounds", "3", "--local-epochs", "1",
        "--no-baselines"]


def _remember(proc: subprocess.Popen, seen: dict[int, float]) -> None:
    for p in descendants(proc):
        try:
            seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            continue


def _still_running(seen: dict[int, float]) -> list[str]:
    out = []
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            continue
    return out


def _kill_after_first_round(out: Path, options: list[str]) -> dict[int, float]:
    """Start a simulation, SIGKILL it (its pid only) once round 1's checkpoint is complete;
    returns every process seen under it (pid -> start time)."""
    proc = subprocess.Popen([*CLI, "-q", "simulate", "--out", str(out), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "round-0001" / "round.json").is_file():
            assert proc.poll() is None, f"the simulation ended (exit {proc.returncode}) early"
            assert time.monotonic() < deadline, "no round 1 checkpoint within 240 s"
            _remember(proc, seen)
            time.sleep(0.2)
        _remember(proc, seen)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _still_running(seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _still_running(seen)
        assert not left, f"processes outlived the killed simulation: {left}"
    finally:
        if proc.poll() is None:
            stop_tree(proc, signal.SIGKILL)
        for pid, started in seen.items():  # whatever the assertion found, by pid
            try:
                p = psutil.Process(pid)
                if p.create_time() == started:
                    p.kill()
            except psutil.Error:
                continue
    assert not (out / "checkpoints" / "round-0003").exists(), "killed too late to test resume"
    return seen


def _rounds(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in
            (out / "checkpoints" / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.integration
def test_a_killed_run_leaves_no_process_and_resumes_to_the_uninterrupted_model(tmp_path):
    # without DP every site's training is seeded by round, so the resumed run must end with
    # exactly the arrays of a run that was never stopped (the calibration noise is fresh)
    plain = [*TINY, "--no-dp"]
    run_in_group([*CLI, "-q", "simulate", "--out", str(tmp_path / "whole"), *plain], timeout=300)
    _kill_after_first_round(tmp_path / "killed", plain)
    out = run_in_group([*CLI, "simulate", "--out", str(tmp_path / "killed"), "--resume"],
                       timeout=300)
    assert "resumed after round" in out
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        np.testing.assert_array_equal(whole[name], resumed[name], err_msg=name)
    assert _rounds(tmp_path / "killed") == _rounds(tmp_path / "whole") == [1, 2, 3]
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["resumed_after_round"] >= 1
    assert (tmp_path / "killed" / "report.md").is_file()


@pytest.mark.integration
def test_a_resumed_dp_run_stays_within_every_sites_budget(tmp_path):
    out = tmp_path / "run"
    _kill_after_first_round(out, [*TINY, "--epsilon", "4"])
    assert len(list((out / "ledgers").glob("site-*.json"))) == 2, "the sites kept no ledgers"
    run_in_group([*CLI, "-q", "simulate", "--out", str(out), "--resume"], timeout=300)
    assert _rounds(out) == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["privacy"]["epsilon"] <= 4.0
    by_kind = metrics["privacy"]["epsilon_by_kind"]
    # the resumed run is the same run at every site: its training count was released once
    for ledger in (out / "ledgers").glob("site-*.json"):
        entries = json.loads(ledger.read_text())["entries"]
        counts = [e for e in entries if e.get("kind") == "training-count"]
        assert len(counts) == 1, (ledger.name, counts)
        assert entries[-1]["epsilon_after"] <= 4.0
    assert by_kind["model-update"] > 0


def test_resume_takes_no_other_option_and_needs_a_resumable_run(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "simulate", *args], capture_output=True, text=True,
                              timeout=120)

    given = run("--out", str(tmp_path), "--resume", "--rounds", "7")
    assert given.returncode == 2 and "--rounds cannot be given" in given.stderr
    assert len(given.stderr.strip().splitlines()) == 1
    empty = run("--out", str(tmp_path), "--resume")
    assert empty.returncode == 2 and "simulation.json" in empty.stderr
    (tmp_path / "simulation.json").write_text('{"version": 1, "config": {"rounds": "x"}}')
    broken = run("--out", str(tmp_path), "--resume")
    assert broken.returncode == 2 and "not a simulation state" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_the_guard_stops_what_a_killed_process_started(tmp_path):
    # a parent starts a long sleeper under the guard and is killed: the guard stops the sleeper
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from simulation.process_guard import guard_descendants
        with guard_descendants():
            child = subprocess.Popen(["sleep", "300"])
            print(child.pid, flush=True)
            time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    sleeper = None
    try:
        sleeper = psutil.Process(int(parent.stdout.readline()))
        time.sleep(1.0)  # the guard looks every 0.25 s
        parent.kill()
        parent.wait(timeout=10)
        sleeper.wait(timeout=15)  # raises TimeoutExpired when the guard left it running
    finally:
        if parent.poll() is None:
            stop_tree(parent, signal.SIGKILL)
        if sleeper is not None and sleeper.is_running():
            sleeper.kill()
