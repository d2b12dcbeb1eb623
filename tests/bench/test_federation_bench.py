"""The federation benchmark: its memory sampler, its phase accounting, and a real --quick run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from process_tree import run_in_group

psutil = pytest.importorskip("psutil")

from bench.federation_bench import phases  # noqa: E402
from bench.memory import TreeMemorySampler, process_role, still_running  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# A parent that holds ~60 MiB and starts a child holding ~120 MiB; both wait a moment.
_TREE = textwrap.dedent("""
    import subprocess, sys, time
    held = bytearray(60 << 20)
    child = subprocess.Popen([sys.executable, "-c",
        "import time; b = bytearray(120 << 20); time.sleep(1.5)"])
    time.sleep(1.0)
    child.wait()
""")


class _Proc:
    def __init__(self, pid: int, cmd: list[str], name: str = "python") -> None:
        self.pid, self._cmd, self._name = pid, cmd, name

    def cmdline(self) -> list[str]:
        return self._cmd

    def name(self) -> str:
        return self._name


@pytest.mark.parametrize(("cmd", "role"), [
    (["ray::DashboardAgent    "], "dashboard_agent"),  # retitled like a worker, padded
    (["ray::RuntimeEnvAgent"], "runtime_env_agent"),
    (["ray::ClientAppActor.run"], "ray_worker"),
    (["ray::IDLE"], "ray_worker"),
    (["/v/bin/python", "-u", "/v/ray/_private/log_monitor.py", "--x"], "log_monitor.py"),
    (["/v/ray/core/src/ray/raylet/raylet", "--a"], "raylet"),
])
def test_ray_processes_are_named_by_role(cmd, role):
    assert process_role(_Proc(7, cmd), root_pid=1) == role
    assert process_role(_Proc(1, cmd), root_pid=1) == "driver"


def test_sampler_sums_the_rss_of_the_whole_tree_and_sees_no_survivors():
    proc = subprocess.Popen([sys.executable, "-c", _TREE])
    with TreeMemorySampler(proc.pid, interval=0.05, pss_every=5) as sampler:
        proc.wait(timeout=30)
    mem = sampler.result
    d = mem.to_dict()
    assert d["processes_seen"] >= 2 and d["max_processes"] == 2
    assert d["peak_rss_sum_mb"] >= 170  # parent + child, not either alone
    assert d["peak_pss_sum_mb"] is not None and 0 < d["peak_pss_sum_mb"] <= d["peak_rss_sum_mb"]
    assert d["processes_at_peak"] == 2 and d["samples"] > 5
    assert sum(d["rss_at_peak_by_process_mb"].values()) == pytest.approx(d["peak_rss_sum_mb"],
                                                                         abs=0.5)
    assert still_running(mem) == []


def test_still_running_reports_a_process_that_outlives_its_parent():
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(30)']); print(p.pid, flush=True); import time; "
            "time.sleep(0.8)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    orphan = int(proc.stdout.readline())
    try:
        with TreeMemorySampler(proc.pid, interval=0.05) as sampler:
            proc.wait(timeout=30)
        left = still_running(sampler.result, exclude=(proc.pid,))
        assert [p["pid"] for p in left] == [orphan]
    finally:
        os.kill(orphan, signal.SIGKILL)
    time.sleep(0.2)
    assert still_running(sampler.result, exclude=(proc.pid,)) == []


def test_phases_split_ray_start_rounds_and_the_rest():
    t0 = 100.0
    marks = {"ray_init": 102.0, "ray_ready": 110.0, "stop": 140.0}
    steps = {"configure_train": [101.0, 125.0], "aggregate_train": [118.0, 132.0],
             "configure_evaluate": [118.5, 132.5], "aggregate_evaluate": [121.0, 135.0]}
    rounds = [{"seconds": 23.0, "threshold": 1.0}, {"seconds": 14.0, "threshold": 2.0}]
    p = phases(marks, steps, rounds, t0, 142.0)
    assert p["ray_start_s"] == 8.0 and p["total_s"] == 42.0
    assert p["rounds_s"] == 29.0 and p["other_s"] == 5.0
    assert p["per_round_train_s"] == [9.0, 7.0]  # round 1 without Ray's start
    assert p["per_round_evaluate_s"] == [2.5, 2.5]
    assert p["per_round_rest_s"] == [3.5, 4.5]
    assert p["before_round_1_s"] == 1.0 and p["shutdown_s"] == 2.0


def test_phases_count_evaluation_only_in_calibrated_rounds():
    # calibration-every = 0: only the last round evaluates (it alone has a threshold)
    marks = {"ray_init": 102.0, "ray_ready": 110.0, "stop": 140.0}
    steps = {"configure_train": [101.0, 125.0], "aggregate_train": [118.0, 132.0],
             "configure_evaluate": [132.5], "aggregate_evaluate": [135.0]}
    rounds = [{"seconds": 23.0, "threshold": None}, {"seconds": 14.0, "threshold": 2.0}]
    p = phases(marks, steps, rounds, 100.0, 142.0)
    assert p["per_round_evaluate_s"] == [0.0, 2.5]
    assert p["per_round_rest_s"] == [6.0, 4.5]


@pytest.mark.integration
@pytest.mark.slow
def test_quick_benchmark_reports_positive_times_and_memory(tmp_path):
    out = tmp_path / "fed.json"
    cmd = [sys.executable, "-m", "bench.federation_bench", "--quick", "--sites", "2",
           "--shoppers", "100", "--tmp-dir", str(tmp_path), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    run_in_group(cmd, timeout=500, cwd=REPO, env=env)
    res = json.loads(out.read_text())
    assert res["bench"] == "federation" and res["machine"]["cpu_count"] >= 1
    assert res["params"]["sites"] == [2] and res["params"]["quick"] is True
    row = res["summary"]["2"]
    for key in ("federated_s", "centralised_s", "ratio", "federated_peak_rss_sum_mb",
                "federated_driver_ru_maxrss_mb", "centralised_peak_rss_mb", "ray_start_s"):
        assert row[key] > 0, key
    assert row["processes_left_behind"] == 0
    site = res["results"]["per_sites"]["2"]
    fed = site["federated"]
    assert fed["rounds"] == 1 and fed["site_rounds_declined"] == 0
    assert fed["tree_memory"]["max_processes"] > 2  # the driver and Ray's processes
    assert fed["tree_memory"]["peak_rss_sum_mb"] > fed["driver_memory"]["vmhwm_mb"]
    assert fed["phases"]["rounds_s"] > 0 and len(fed["phases"]["per_round_train_s"]) == 1
    assert site["centralised"]["epochs"] == 1 and site["centralised"]["steps"] > 0
    assert res["results"]["children_left"] == []
    assert not list(tmp_path.glob("seqanom-federation-bench-*"))  # temporary files removed
