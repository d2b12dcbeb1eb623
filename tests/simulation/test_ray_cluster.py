"""The simulation on a Ray cluster the test starts: a head and a second node on this machine
(separate ``ray start --block`` processes, one CPU each, each in its own session and stopped by
pid), so two sites of one CPU each must run one on each node. Both ways in: ``seqanom simulate
--ray-address`` and ``flwr run .`` on a SuperLink whose environment holds ``RAY_ADDRESS``, with
the sites' resources in the federation config (what ``simulate --prepare-only`` prints).

What is checked: the run completes; Ray's actor table (read by a driver of the test's own)
gains Flower's two site actors, one on each node; the process that ran the federation started
no GCS or raylet of its own (its process tree is sampled while it runs); every cluster daemon
still runs afterwards (``simulate``'s process guard stops only its own descendants); and
nothing of the cluster is left once the test stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from flwr_processes import flwr, start_superlink, wait_for_status, write_connection
from process_tree import descendants, free_port, stop_tree, stop_trees

from simulation.federation import ray_cluster_problem

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")
DAEMONS = ("gcs_server", "raylet")  # what a process that starts Ray runs
# a driver of the test's own: waits for two live nodes, then prints nodes and actors as JSON
QUERY = """
import json, sys, time, ray
ray.init(address=sys.argv[1], include_dashboard=False, logging_level="ERROR")
from ray._private import state  # the GCS actor table: the state API needs the dashboard
for _ in range(120):
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2:
        break
    time.sleep(0.5)
actors = {a["ActorID"]: {"class": a["ActorClassName"], "node": a["Address"]["NodeID"]}
          for a in state.actors().values()}
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    nodes: list[subprocess.Popen]
    node_ids: list[str] = field(default_factory=list)
    daemons: dict[int, float] = field(default_factory=dict)  # pid -> start time
    seen: dict[int, float] = field(default_factory=dict)  # every cluster process seen

    def query(self) -> dict:
        out = subprocess.run([sys.executable, "-c", QUERY, self.address], capture_output=True,
                             text=True, timeout=120, env=self.env, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def site_actors(self) -> dict[str, str]:
        """Flower's site actors in the actor table: actor id -> node id."""
        return {k: a["node"] for k, a in self.query()["actors"].items()
                if a["class"] == "ClientAppActor"}


def _tree(procs: list[subprocess.Popen], names: tuple[str, ...] | None = None
          ) -> dict[int, float]:
    """pid -> start time of the processes under ``procs`` (with ``names``: only those named so,
    and ``procs`` themselves)."""
    found = {}
    for proc in procs:
        for p in descendants(proc):
            try:
                if names is None or p.pid == proc.pid or p.name() in names:
                    found[p.pid] = p.create_time()
            except psutil.NoSuchProcess:
                continue
    return found


def _alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A Ray head and a second Ray node on this machine, one CPU each; stopped by pid after."""
    logs = tmp_path_factory.mktemp("ray-logs")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a limit
    port = free_port()
    c = Cluster(address=f"127.0.0.1:{port}", nodes=[],
                env=dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0"))
    common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--node-ip-address",
              "127.0.0.1", "--disable-usage-stats"]
    try:
        with (logs / "head.log").open("w") as log:
            c.nodes.append(subprocess.Popen(
                [RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
                 "--temp-dir", temp, "--ray-client-server-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()), *common],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=c.env))
        deadline = time.monotonic() + 60
        while ray_cluster_problem(c.address, timeout=2.0) is not None:
            assert c.nodes[0].poll() is None, (logs / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not answer within 60 s"
            time.sleep(0.5)
        with (logs / "node.log").open("w") as log:
            c.nodes.append(subprocess.Popen(
                [RAY, "start", "--address", c.address,
                 "--dashboard-agent-listen-port", str(free_port()), *common],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=c.env))
        c.node_ids = c.query()["nodes"]
        assert len(c.node_ids) == 2, c.node_ids
        c.daemons = _tree(c.nodes, DAEMONS)
        c.seen |= c.daemons
        names = sorted(psutil.Process(pid).name() for pid in c.daemons)
        assert names.count("raylet") == 2 and names.count("gcs_server") == 1, names
        yield c
    finally:
        c.seen |= _tree(c.nodes)
        stop_trees(c.nodes, timeout=5)
        shutil.rmtree(temp, ignore_errors=True)
    left = [pid for pid, started in c.seen.items() if _alive(pid, started)]
    assert not left, f"cluster processes left running: {left}"


def _watch(proc: subprocess.Popen, c: Cluster, done, timeout: float) -> set[str]:
    """Wait until ``done()`` (or ``timeout``), sampling ``proc``'s tree: the names of the Ray
    daemons found under it (none: it started no Ray of its own)."""
    own: set[str] = set()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        for p in descendants(proc)[1:]:
            try:
                if p.name() in DAEMONS:
                    own.add(p.name())
            except psutil.NoSuchProcess:
                continue
        c.seen |= _tree(c.nodes)
        time.sleep(0.5)
    assert done(), f"not done within {timeout} s"
    return own


def _check_sites_and_daemons(c: Cluster, before: dict[str, str], what: str) -> None:
    """Two new site actors, one on each node, and every cluster daemon still running."""
    time.sleep(1.0)
    stopped = [pid for pid, started in c.daemons.items() if not _alive(pid, started)]
    assert not stopped, f"cluster processes gone after {what}: {stopped}"
    sites = {k: n for k, n in c.site_actors().items() if k not in before}
    per_node = [sum(n == node for n in sites.values()) for node in c.node_ids]
    print(f"{what}: site actors per node {per_node}")
    assert len(sites) == 2 and per_node == [1, 1], (per_node, sites)


def test_simulate_runs_its_sites_on_both_nodes_of_an_existing_cluster(cluster, tmp_path):
    before = cluster.site_actors()
    out = tmp_path / "run"
    t0 = time.monotonic()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulation.cli", "-q", "simulate", "--shoppers", "120",
         "--sites", "2", "--rounds", "1", "--local-epochs", "1", "--no-baselines",
         "--ray-address", cluster.address, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=cluster.env)
    try:
        own = _watch(sim, cluster, lambda: sim.poll() is not None, timeout=300)
    finally:
        if sim.poll() is None:
            stop_tree(sim)
    output = sim.communicate()[0]
    assert sim.returncode == 0, output[-3000:]
    print(f"simulate on the cluster: {time.monotonic() - t0:.0f} s")
    assert not own, f"simulate started Ray of its own: {own}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["evaluation"]["federated"]["auroc"] <= 1.0
    assert (out / "checkpoints" / "round-0001").is_dir()
    _check_sites_and_daemons(cluster, before, "simulate")


def test_flwr_run_on_a_superlink_with_ray_address_uses_the_cluster(cluster, tmp_path):
    run_dir = tmp_path / "run"
    prepared = subprocess.run(
        [sys.executable, "-m", "simulation.cli", "-q", "simulate", "--prepare-only",
         "--shoppers", "120", "--sites", "2", "--rounds", "1", "--local-epochs", "1",
         "--ray-address", cluster.address, "--out", str(run_dir)],
        capture_output=True, text=True, timeout=300, env=cluster.env)
    assert prepared.returncode == 0, prepared.stderr
    federation = ("num-supernodes=2 client-resources-num-cpus=1 "
                  "client-resources-num-gpus=0")  # as printed
    assert f"RAY_ADDRESS={cluster.address} flower-superlink" in prepared.stdout
    assert f"--federation-config '{federation}'" in prepared.stdout
    before = cluster.site_actors()
    home, port = tmp_path / "flwr-home", free_port()
    write_connection(home, "seqanom-sim", port)
    t0 = time.monotonic()
    link = start_superlink(home, port, tmp_path / "superlink.log", RAY_ADDRESS=cluster.address)
    try:
        out = flwr(home, "run", ".", "seqanom-sim", "--run-config",
                   str(run_dir / "run-config.toml"), "--federation-config", federation,
                   "--format", "json")
        assert out.returncode == 0, out.stdout + out.stderr
        run_id = str(json.loads(out.stdout)["run-id"])
        # the final model is the ServerApp's last write; the SuperLink's tree is sampled until
        own = _watch(link, cluster, timeout=300,
                     done=lambda: (run_dir / "model").is_dir() or link.poll() is not None)
        status = wait_for_status(home, "seqanom-sim", run_id, timeout=120)
    finally:
        stop_tree(link)
    print(f"flwr run on the cluster: {time.monotonic() - t0:.0f} s")
    assert status["status"] == "finished:completed", status
    assert not own, f"the SuperLink started Ray of its own: {own}"
    assert (run_dir / "checkpoints" / "round-0001").is_dir()
    _check_sites_and_daemons(cluster, before, "flwr run")
