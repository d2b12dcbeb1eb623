"""The training step of a round under SecAgg+ (privacy-mode ``local+secagg``), on Flower's legacy stack.

Flower 1.41-1.42 run SecAgg+ only through their legacy stack: a ``LegacyContext`` (legacy strategy,
client manager) and ``SecAggPlusWorkflow``, the fit step that ``DefaultWorkflow`` runs once per
round. ``DefaultWorkflow`` also owns the round loop and the evaluation, which would bypass this
project's loop (update checks, federated calibration, checkpoints, metrics log, resume), so the
run loop calls the SecAgg+ fit step itself, one round at a time, through the same LegacyContext
state keys ``DefaultWorkflow`` uses. Evaluation stays on the Message API.

The server learns only the weighted sum of the sites' masked, quantised updates (each site's
update, never its weights, see ``client/secagg.py``), plus each site's scalar metrics (loss,
epsilon, ...) in clear. The legacy FedAvg then averages by the sites' weights: the aggregate
update is added to the global model here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from seqanom_core.federation import message_keys
from seqanom_core.federation.releases import SITE_METRICS
from seqanom_core.federation.run_config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class SecAggRound:
    """Outcome of one SecAgg+ training step."""

    update: dict[str, np.ndarray] | None  # the sites' weighted mean update (None: nothing summed)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> metrics in clear
    failures: int = 0
    all_declined: bool = False


class _RecordingWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that keeps the sites' clear-text fit results of the round and
    halts (nothing to unmask) when every site declined, instead of dividing by a zero weight."""

    results: list[tuple[int, Any]]

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = super().collect_masked_vectors_stage(grid, context, state)
        self.results = [(proxy.node_id, res) for proxy, res in state.legacy_results]
        self.failures = len(state.failures)
        if ok and self.results and all(res.num_examples == 0 for _, res in self.results):
            log.info("SecAgg+: every site declined this round; nothing to unmask")
            return False
        return ok


class SecAggTraining:
    """Runs SecAgg+ fit steps over ``grid`` with the run's settings."""

    def __init__(self, grid: Grid, settings: RunConfig, run_id: str,
                 names: list[str]) -> None:
        fed, p = settings.federation, settings.privacy
        self.grid, self.names, self.run_id, self.fed = grid, names, run_id, fed
        self.proximal_mu = fed.proximal_mu if fed.strategy == "fedprox" else 0.0
        self.strategy = LegacyFedAvg(
            fraction_fit=fed.fraction_train, fraction_evaluate=0.0,
            min_fit_clients=fed.min_sites, min_available_clients=fed.min_sites,
            accept_failures=True, fit_metrics_aggregation_fn=lambda _: {})
        self.workflow = _RecordingWorkflow(
            num_shares=p.secagg_num_shares, reconstruction_threshold=p.secagg_reconstruction_threshold,
            max_weight=p.secagg_max_weight, clipping_range=p.secagg_clipping_range,
            quantization_range=p.secagg_quantization_range, modulus_range=p.secagg_modulus_range,
            timeout=fed.round_timeout)
        self.manager = SimpleClientManager()
        base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        self.context = LegacyContext(base, config=ServerConfig(num_rounds=fed.num_rounds),
                                     strategy=self.strategy, client_manager=self.manager)

    def _register_nodes(self) -> None:
        """The legacy client manager's view of the grid's nodes (what DefaultWorkflow's
        background thread keeps up to date)."""
        known = set(self.manager.all())
        for nid in self.grid.get_node_ids():
            if str(nid) not in known:
                self.manager.register(GridClientProxy(node_id=nid, grid=self.grid, run_id=0))

    def train(self, server_round: int, arrays: dict[str, np.ndarray]) -> SecAggRound:
        """One SecAgg+ fit step from the global ``arrays``."""
        self._register_nodes()
        config = {message_keys.SERVER_ROUND: server_round, message_keys.ROUNDS_LEFT: self.fed.num_rounds - server_round + 1,
                  message_keys.RUN_ID: self.run_id, message_keys.ARRAY_NAMES: json.dumps(self.names),
                  message_keys.PROXIMAL_MU: self.proximal_mu}
        self.strategy.on_fit_config_fn = lambda _r: dict(config)
        state = self.context.state
        state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([arrays[k] for k in self.names]), keep_input=True)
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        sent = state.array_records[MAIN_PARAMS_RECORD]
        self.workflow.results, self.workflow.failures = [], 0
        self.workflow(self.grid, self.context)
        sites = {}
        for nid, res in self.workflow.results:
            m = dict(res.metrics)
            name = str(m.pop(message_keys.SITE_NAME, f"node-{nid}"))
            sites[name] = {k: float(v) for k, v in m.items() if k in SITE_METRICS}
        out = SecAggRound(None, sites, self.workflow.failures,
                          all_declined=bool(sites) and all(s.get("declined") for s in sites.values()))
        aggregated = state.array_records[MAIN_PARAMS_RECORD]
        if aggregated is not sent:
            mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(aggregated, True))
            out.update = dict(zip(self.names, mean, strict=True))
        return out
