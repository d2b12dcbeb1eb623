"""The Ray instance a simulation starts (``simulation/ray_runtime.py``): its ``ray.init``
arguments and environment, and (integration) that its actors start with the libraries and the
ClientApp module imported and one torch thread each."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulation.federation import Placement, backend_config
from simulation.ray_runtime import (
    ACTOR_PRELOAD,
    actor_environment,
    actor_threads,
    environment,
    local_init_args,
    preload_modules,
)

REPO = Path(__file__).resolve().parents[2]


def test_a_ray_started_here_preloads_the_libraries_and_the_clientapp_module():
    init = backend_config(Placement(gpus_per_site=0.0), 3, "bench.faulty_sites:app")["init_args"]
    assert init["include_dashboard"] is False and init["num_cpus"] >= 1
    modules = init["_system_config"]["preload_python_modules"]
    assert {"torch", "opacus", "pyarrow", "flwr.clientapp"} <= set(modules)
    assert modules[-1] == "bench.faulty_sites" and "client.app" not in modules
    assert init["_system_config"]["prestart_worker_first_driver"] is False
    assert backend_config(Placement(gpus_per_site=0.0), 3)["init_args"][
        "_system_config"]["preload_python_modules"][-1] == "client.app"
    assert init == local_init_args(max(1, os.cpu_count() or 1), "bench.faulty_sites:app")
    # Flower hands the backend config over as JSON
    assert json.loads(json.dumps(init)) == init


def test_an_existing_cluster_gets_no_system_config():
    init = backend_config(Placement(ray_address="10.0.0.5:6379", gpus_per_site=0.0), 2)["init_args"]
    assert "_system_config" not in init and "num_cpus" not in init


def test_every_preloaded_module_exists():
    """Ray only logs a module it cannot import (in the worker's log): a renamed one would go
    unnoticed and the actors would be cold again."""
    missing = [m for m in preload_modules("client.app:app") if importlib.util.find_spec(m) is None]
    assert missing == []
    assert preload_modules("torch") == list(ACTOR_PRELOAD)  # no module twice


@pytest.mark.parametrize(("cpus", "threads"), [(0.25, 1), (1.0, 1), (1.5, 1), (2.0, 2), (4.0, 4)])
def test_an_actor_gets_a_torch_thread_per_whole_cpu(cpus, threads):
    assert actor_threads(cpus) == threads
    assert environment(cpus)["OMP_NUM_THREADS"] == str(threads)


def test_the_ray_environment_is_set_only_where_unset_and_only_within_the_block(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # the user's choice stands
    with actor_environment(2.0) as added:
        assert os.environ["OMP_NUM_THREADS"] == "2" and added == {"OMP_NUM_THREADS": "2"}
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    assert "OMP_NUM_THREADS" not in os.environ
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    with pytest.raises(RuntimeError), actor_environment(1.0):
        raise RuntimeError("the simulation failed")
    assert "OMP_NUM_THREADS" not in os.environ


# a driver of its own: Ray started as run_federation starts it; what each actor found at start
DRIVER = """
import json, os, sys
import ray
from simulation.process_guard import guard_descendants
from simulation.ray_runtime import actor_environment, local_init_args

@ray.remote(num_cpus=1)
class Probe:
    def __init__(self):
        self.at_start = sorted(m for m in ("torch", "opacus", "client.app") if m in sys.modules)

    def report(self):
        import torch
        return {"at_start": self.at_start, "threads": torch.get_num_threads()}

with guard_descendants(), actor_environment(1.0):
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
             **local_init_args(2, "client.app:app"))
    try:
        print("REPORT " + json.dumps(ray.get([p.report.remote() for p in
                                              [Probe.remote() for _ in range(2)]])))
    finally:
        ray.shutdown()
"""


@pytest.mark.integration
def test_actors_start_warm_with_one_torch_thread():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", DRIVER], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("REPORT "))
    reports = json.loads(line.removeprefix("REPORT "))
    assert reports == [{"at_start": ["client.app", "opacus", "torch"], "threads": 1}] * 2
