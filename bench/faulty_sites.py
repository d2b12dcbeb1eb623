"""A benchmark-only ClientApp whose chosen sites drop out or send corrupted updates.

Nothing here runs at a deployed site: ``client.app`` is the product's ClientApp, and this module
only wraps its handlers (``client.app.train`` / ``evaluate`` / ``query_score_summary``) for
``bench.fault_bench``, which starts the simulation with ``client_app_attr="bench.faulty_sites:app"``.

The fault plan is a small JSON file, ``RUN_DIR/fault-plan.json``, where ``RUN_DIR`` is the parent
of the run config's ``checkpoint-dir`` (the run config itself rejects keys it does not know).
Without the file every site behaves exactly as ``client.app``. Faults (``FAULTS``):

* ``clean``: none;
* ``dropout30``: each round a fresh 30% of the sites (seeded by the plan's seed and the round)
  fails every message of that round (training, and the calibration queries after the last
  round) with ``InjectedDropoutError``, so the server gets an error reply and goes on with the
  others, as it does for a site that crashed;
* ``nan``, ``scale100``, ``signflip``, ``random``: a fixed 20% of the sites (seeded) is Byzantine
  and replaces its trained arrays (``corrupt_update``); its calibration replies stay honest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import app as site_app
from seqanom_core.federation import message_keys
from seqanom_core.federation.records import as_arrays

log = logging.getLogger(__name__)

CLEAN, DROPOUT = "clean", "dropout30"
BYZANTINE = ("nan", "scale100", "signflip", "random")
FAULTS = (CLEAN, DROPOUT, *BYZANTINE)
PLAN_FILE = "fault-plan.json"

app = ClientApp()


class InjectedDropoutError(RuntimeError):
    """A site the fault plan takes offline for this round."""


@dataclass(frozen=True)
class FaultPlan:
    """Which sites misbehave, how, and when (deterministic in ``seed``)."""

    fault: str
    n_sites: int
    seed: int = 0
    dropout_fraction: float = 0.3
    byzantine_fraction: float = 0.2
    scale: float = 100.0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {self.fault!r}")
        if self.n_sites < 1:
            raise ValueError(f"need at least one site, not {self.n_sites}")

    @property
    def n_dropped(self) -> int:
        """Sites offline in each round under ``dropout30``."""
        return round(self.dropout_fraction * self.n_sites) if self.fault == DROPOUT else 0

    @property
    def n_byzantine(self) -> int:
        """Sites that corrupt their updates under a Byzantine fault."""
        return round(self.byzantine_fraction * self.n_sites) if self.fault in BYZANTINE else 0

    def byzantine_sites(self) -> list[int]:
        """The fixed Byzantine sites (partition ids), the same in every round."""
        rng = np.random.default_rng([self.seed, 7])
        return sorted(int(k) for k in rng.choice(self.n_sites, self.n_byzantine, replace=False))

    def dropped_sites(self, server_round: int) -> list[int]:
        """The sites offline in ``server_round``, drawn afresh every round."""
        rng = np.random.default_rng([self.seed, 11, server_round])
        return sorted(int(k) for k in rng.choice(self.n_sites, self.n_dropped, replace=False))

    def write(self, run_dir: Path) -> Path:
        """Write the plan where the ClientApp of a run in ``run_dir`` looks for it."""
        path = run_dir / PLAN_FILE
        path.write_text(json.dumps(asdict(self)) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: Path) -> FaultPlan | None:
        """The plan of the run in ``run_dir``; None when it has none."""
        path = run_dir / PLAN_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def corrupt_update(fault: str, global_arrays: dict[str, np.ndarray],
                   local_arrays: dict[str, np.ndarray], rng: np.random.Generator,
                   scale: float = 100.0) -> dict[str, np.ndarray]:
    """A Byzantine site's arrays in place of its trained ``local_arrays``.

    With update u = local - global: ``nan`` every value NaN; ``scale100`` global + scale * u;
    ``signflip`` global - u; ``random`` global + g, g Gaussian with the norm of u (over all
    arrays together). Names, shapes and dtypes are kept."""
    if fault not in BYZANTINE:
        raise ValueError(f"not a Byzantine fault: {fault!r}")
    update = {k: local_arrays[k].astype(np.float64) - global_arrays[k] for k in local_arrays}
    if fault == "nan":
        new = {k: np.full(v.shape, np.nan) for k, v in update.items()}
    elif fault == "scale100":
        new = {k: global_arrays[k] + scale * u for k, u in update.items()}
    elif fault == "signflip":
        new = {k: global_arrays[k] - u for k, u in update.items()}
    else:
        noise = {k: rng.standard_normal(u.shape) for k, u in update.items()}
        norm_u = np.sqrt(sum(float(np.sum(u * u)) for u in update.values()))
        norm_g = np.sqrt(sum(float(np.sum(g * g)) for g in noise.values()))
        factor = norm_u / norm_g if norm_g > 0 else 0.0
        new = {k: global_arrays[k] + factor * g for k, g in noise.items()}
    return {k: v.astype(local_arrays[k].dtype) for k, v in new.items()}


def _plan_and_site(context: Context) -> tuple[FaultPlan | None, int]:
    """The run's fault plan (None: no faults) and this site's partition id."""
    checkpoint_dir = context.run_config.get("checkpoint-dir")
    plan = FaultPlan.read(Path(str(checkpoint_dir)).parent) if checkpoint_dir else None
    return plan, int(context.node_config.get("partition-id", -1))


def _drop_if_planned(msg: Message, context: Context) -> FaultPlan | None:
    """Raise ``InjectedDropoutError`` when the plan takes this site offline for the message's
    round; else the plan (None: no faults)."""
    plan, site = _plan_and_site(context)
    if plan is not None and plan.fault == DROPOUT:
        r = int(msg.content[message_keys.CONFIG][message_keys.SERVER_ROUND])
        if site in plan.dropped_sites(r):
            raise InjectedDropoutError(f"site-{site} is offline in round {r} (fault bench)")
    return plan


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``client.app.train``; dropped sites fail, Byzantine sites corrupt their arrays."""
    plan = _drop_if_planned(msg, context)
    reply = site_app.train(msg, context)
    site = int(context.node_config.get("partition-id", -1))
    if (plan is None or plan.fault not in BYZANTINE or site not in plan.byzantine_sites()
            or reply.has_error() or message_keys.ARRAYS not in reply.content):
        return reply
    r = int(msg.content[message_keys.CONFIG][message_keys.SERVER_ROUND])
    rng = np.random.default_rng([plan.seed, 13, r, site])
    corrupted = corrupt_update(plan.fault, as_arrays(msg.content[message_keys.ARRAYS]),
                               as_arrays(reply.content[message_keys.ARRAYS]), rng, plan.scale)
    reply.content[message_keys.ARRAYS] = site_app.to_array_record(corrupted)
    log.info("site-%d (Byzantine, %s) sent a corrupted update in round %d", site, plan.fault, r)
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """``client.app.evaluate``; dropped sites fail."""
    _drop_if_planned(msg, context)
    return site_app.evaluate(msg, context)


@app.query(message_keys.SCORE_SUMMARY)
def query_score_summary(msg: Message, context: Context) -> Message:
    """``client.app.query_score_summary``; dropped sites fail."""
    _drop_if_planned(msg, context)
    return site_app.query_score_summary(msg, context)
