"""Run the seqanom ServerApp and ClientApps on Flower's simulation engine (Ray), in this process.

Each site's files are written under ``RUN_DIR/sites/site-<k>/`` (train.parquet, test.parquet,
labels.csv); the ClientApp of virtual SuperNode k (``partition-id`` k) reads them from there.
The run config is written as a Flower app config (``RUN_DIR/flwr-app/pyproject.toml``) so that
server and every site get the same typed settings, exactly as with ``flwr run``.

Flower 1.41 offers two ways to start a simulation: ``flwr run`` against a SuperLink (documented
in the README) and the in-process engine used here, which needs no background SuperLink and
ends with this process. The engine's entry point with a run config is Flower's
``_run_simulation`` (what ``flwr-simulation`` itself calls); ``run_simulation`` has no run config.

The sites run on a Ray cluster this process starts (and stops), or on an existing one
(``Placement.ray_address``, ``simulate --ray-address``): then this process only connects to it as
a driver, and the cluster's processes, which are not its descendants, are left running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError
from simulation.process_guard import guard_descendants
from simulation.ray_runtime import actor_environment, local_init_args

log = logging.getLogger(__name__)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_lines(values: dict[str, Any]) -> list[str]:
    """``"key" = value`` TOML lines of a flat run config."""
    return [f'"{k}" = {_toml_value(v)}' for k, v in values.items()]


def write_app_config(app_dir: Path, run_config: dict[str, Any],
                     clientapp: str = "client.app:app") -> Path:
    """A minimal Flower app directory whose ``[tool.flwr.app.config]`` is ``run_config``."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = ["[project]", 'name = "seqanom-simulation"', 'version = "0.1.0"', "",
             "[tool.flwr.app]", 'publisher = "seqanom"', "",
             "[tool.flwr.app.components]", 'serverapp = "server.app:app"',
             f'clientapp = "{clientapp}"', "", "[tool.flwr.app.config]"]
    lines += toml_lines(run_config)
    path = app_dir / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def new_run_id() -> int:
    """A fresh Flower run id (milliseconds since the epoch)."""
    return int(time.time() * 1000) % (2**62)


@dataclass(frozen=True)
class Placement:
    """Where the simulated sites run: a runtime choice, not a setting of the experiment (it is
    not kept in ``simulation.json``; a resumed run may run elsewhere).

    ``ray_address``: the GCS address (``HOST:PORT``) of a running Ray cluster to run the sites
    on; this process must run on one of its nodes, and the run directory and the project must
    be at the same paths on every node. None: start Ray here for the run.
    ``gpus_per_site``: the Ray ``num_gpus`` of each site; None: ``default_gpus_per_site``."""

    ray_address: str | None = None
    cpus_per_site: float = 1.0
    gpus_per_site: float | None = None


def default_gpus_per_site(n_sites: int) -> float:
    """0 without CUDA; with it, this machine's GPUs shared evenly by the sites (at most one GPU
    each), rounded down to Ray's resource precision (1e-4)."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return min(1.0, math.floor(torch.cuda.device_count() / max(1, n_sites) * 1e4) / 1e4)


def ray_cluster_problem(address: str, timeout: float = 5.0) -> str | None:
    """Why no Ray cluster answers at ``address`` (``HOST:PORT`` of its GCS), or None when one
    does. Asks the GCS for its cluster id over gRPC within ``timeout`` seconds: ``ray.init``
    itself waits minutes for an address where no Ray GCS listens."""
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        ask = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                  request_serializer=lambda _: b"",
                                  response_deserializer=lambda b: b)
        ask(None, timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if callable(getattr(err, "code", None)) else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return "a gRPC server that is not a Ray GCS answers there"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"nothing answered within {timeout:g} s"
        return "nothing answers there (is the Ray head started with this --port?)"
    except ValueError as err:  # an address gRPC cannot parse
        return f"not an address gRPC can use ({err})"
    finally:
        channel.close()
    return None


def backend_config(placement: Placement, n_sites: int,
                   clientapp: str = "client.app:app") -> dict[str, Any]:
    """Flower's Ray backend config of ``placement``: the sites' resources, and ``ray.init``'s
    arguments: for a Ray instance started here, all CPUs and actors that import their libraries
    and ``clientapp``'s module as they start (``simulation.ray_runtime``); an existing cluster:
    its address, no CPU count (which Ray refuses there) and no system config."""
    gpus = (default_gpus_per_site(n_sites) if placement.gpus_per_site is None
            else placement.gpus_per_site)
    if placement.ray_address is None:
        init = local_init_args(max(1, os.cpu_count() or 1), clientapp)
    else:
        init = {"include_dashboard": False, "address": placement.ray_address}
    return {"client_resources": {"num_cpus": placement.cpus_per_site, "num_gpus": gpus},
            "init_args": init}


def run_federation(run_dir: Path, run_config: dict[str, Any], n_sites: int, *,
                   placement: Placement | None = None, run_id: int | None = None,
                   client_app_attr: str = "client.app:app") -> float:
    """Run the federation for ``n_sites`` virtual sites; returns wall seconds. Raises on failure.

    ``run_id``: the Flower run id the sites see (their ledgers group releases by it; a resumed
    simulation passes its first start's so the sites continue that run). None: a new one.
    ``client_app_attr``: the sites' ClientApp (``module:attribute``); only benchmarks change it
    (``bench.faulty_sites:app`` injects faults).
    ``placement``: the Ray cluster (started here or an existing one) and the sites' resources
    (None: ``Placement()``).
    No Ray process started here outlives this process, even when it is killed
    (``simulation.process_guard``); an existing cluster's processes are not started here and
    are left alone."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    if n_sites < 1:
        raise ConfigError(f"need at least one site, not {n_sites}")
    placement = placement or Placement()
    if placement.ray_address is not None:
        problem = ray_cluster_problem(placement.ray_address)
        if problem is not None:
            raise ConfigError(f"no Ray cluster at {placement.ray_address}: {problem}")
    app_dir = run_dir / "flwr-app"
    write_app_config(app_dir, run_config, client_app_attr)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    run = Run.create_empty(run_id=new_run_id() if run_id is None else run_id)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    backend = backend_config(placement, n_sites, client_app_attr)
    log.info("sites' Ray resources %s on %s", backend["client_resources"],
             placement.ray_address or "a Ray instance started here")
    t0 = time.time()
    # the environment of the Ray processes started here (an existing cluster has its own)
    ray_env = (actor_environment(placement.cpus_per_site) if placement.ray_address is None
               else contextlib.nullcontext())
    with guard_descendants(), ray_env, warnings.catch_warnings():
        # Ray's notice that a later version will stop hiding GPUs from actors with num_gpus=0:
        # this Ray still hides them, which is what CPU-only sites rely on
        warnings.filterwarnings("ignore", message="Tip: In future versions of Ray",
                                category=FutureWarning)
        result = _run_simulation(
            num_supernodes=n_sites, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app_attr=client_app_attr, server_app_attr="server.app:app",
            backend_name="ray", backend_config=backend, server_app_context=context,
            app_dir=str(app_dir), run=run, is_app=True,
        )
    del result  # a ServerApp exception has already been raised by _run_simulation
    return time.time() - t0


def rounds_with_site_logs(rounds: list[dict[str, Any]], ledger_dir: Path) -> list[dict[str, Any]]:
    """The server's round records with what the sites measured but kept (their local logs, beside
    their ledgers): per round, the mean over sites of their training loss (``train``) and of their
    validation loss, accuracy and labelled AUROC/AUPRC (``evaluate``), under ``site_logs``.

    Only a simulation can do this (it runs every site); in a deployment these stay at the sites."""
    sums: dict[tuple[int, str], dict[str, list[float]]] = {}
    for path in sorted(ledger_dir.glob("*.local.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            key = (int(entry.pop("round")), str(entry.pop("handler")))
            for k, v in entry.items():
                sums.setdefault(key, {}).setdefault(k, []).append(float(v))
    out = []
    for r in rounds:
        r = dict(r)
        for handler in ("train", "evaluate"):
            values = sums.get((int(r.get("round", 0)), handler), {})
            if values:
                r["site_logs"] = {**r.get("site_logs", {}), handler: {
                    k: sum(v) / len(v) for k, v in values.items()}}
        out.append(r)
    return out
