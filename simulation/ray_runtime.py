"""The Ray instance a simulation starts for itself: as lean as Flower's simulation engine allows,
with its actors warm before the first message.

Flower's Ray backend calls ``ray.init(runtime_env=..., **init_args)`` with the backend config's
``init_args``, creates one ``ClientAppActor`` per ``num_cpus / client_resources.num_cpus``, and
ignores its ``actor`` settings (Flower 1.42). What that leaves to tune, as measured with
Ray 2.55 (``bench/README.md``, "Lean simulation runtime"):

* **Ray's daemons** (GCS, raylet, dashboard, dashboard agent, runtime-env agent, autoscaler
  monitor, log monitor; about 340 MB RSS / 235 MB PSS at start) are all started by ``ray.init``,
  whatever its arguments: ``include_dashboard=False`` only limits the dashboard to its
  usage-stats module, the raylet refuses to start without its two agents, and the monitor and
  log monitor can be left out only by ``ray start`` (``--no-monitor``, a hidden flag,
  ``--include-log-monitor``). None of ``log_to_driver``, ``object_store_memory``,
  ``enable_metrics_collection`` or usage stats changed their memory. This Ray is the minimal
  install (no ``aiohttp``), so the dashboard and its agent already run without their web
  server and metrics.
* **Usage stats** are turned off (``RAY_USAGE_STATS_ENABLED=0``, unless set): otherwise the
  dashboard sends a report to ``usage-stats.ray.io`` a minute into every run.
* **Warm actors**: ``_system_config["preload_python_modules"]`` has every Ray worker import
  torch, Opacus, pyarrow, Flower's ClientApp and the sites' ClientApp module before it takes
  work, so an actor's first message no longer pays for them (2.1-2.5 s instead of 4.9-6.0 s at
  10 sites). On 2 busy cores this moves CPU time rather than saving it: the actors are created
  when Ray has started, and they import while the first messages wait.
* **No prestarted workers**: the raylet starts one worker per CPU when the driver connects
  (``prestart_worker_first_driver``), but Flower's actors, requested before those have
  registered, got workers of their own; the prestarted ones were stopped unused, after
  importing Ray (and, with the preload, part of torch) on the cores the run needs.
* **One torch thread per CPU of a site**: Ray sets ``OMP_NUM_THREADS`` to an actor's CPUs when
  it starts the actor, which is after the preload has imported torch (torch would keep the
  machine's core count). So ``OMP_NUM_THREADS`` is set for the Ray processes started here
  (``actor_environment``), before the raylet starts.

An existing cluster (``simulate --ray-address``) keeps the settings it was started with.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: What every actor imports before its first message (besides the sites' ClientApp module):
#: what ``client.app`` and a DP training round import. ``torch._dynamo`` is what torch imports
#: when a process creates its first optimizer (2 of the 8 s of an actor's first message, with
#: pandas, measured 2026-12-08). A missing one is logged by Ray and skipped.
ACTOR_PRELOAD = ("numpy", "pyarrow", "pyarrow.parquet", "torch", "torch._dynamo", "opacus",
                 "opacus.accountants", "flwr.app", "flwr.clientapp",
                 "seqanom_core.training", "seqanom_core.privacy")


def actor_threads(cpus_per_site: float) -> int:
    """torch threads of an actor with ``cpus_per_site`` CPUs: their whole number, at least 1
    (what Ray gives ``OMP_NUM_THREADS`` for such an actor)."""
    return max(1, math.floor(cpus_per_site))


def preload_modules(clientapp: str) -> list[str]:
    """The modules an actor imports as it starts: ``ACTOR_PRELOAD`` and the module of
    ``clientapp`` (``module:attribute``)."""
    module = clientapp.partition(":")[0]
    return [*ACTOR_PRELOAD, *([module] if module and module not in ACTOR_PRELOAD else [])]


def local_init_args(num_cpus: int, clientapp: str) -> dict[str, Any]:
    """``ray.init`` arguments of a Ray instance started for the run (Flower adds the
    ``runtime_env`` with the driver's ``PYTHONPATH``)."""
    return {"include_dashboard": False, "num_cpus": num_cpus,
            "_system_config": {"preload_python_modules": preload_modules(clientapp),
                               "prestart_worker_first_driver": False}}


def environment(cpus_per_site: float) -> dict[str, str]:
    """Environment variables for the Ray processes started for the run (each only if unset)."""
    return {"OMP_NUM_THREADS": str(actor_threads(cpus_per_site)),
            "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def actor_environment(cpus_per_site: float) -> Iterator[dict[str, str]]:
    """Within the block, ``environment(cpus_per_site)`` is in ``os.environ`` where the variable
    was unset (the Ray processes started in the block inherit it); restored afterwards. Yields
    what was set.

    torch is imported first: its thread count in this process is then fixed, so the driver's
    own torch (the ServerApp) keeps its default."""
    import torch  # noqa: F401 - see above

    added = {k: v for k, v in environment(cpus_per_site).items() if k not in os.environ}
    os.environ.update(added)
    log.debug("environment of the Ray processes: %s", added)
    try:
        yield added
    finally:
        for k in added:
            os.environ.pop(k, None)
