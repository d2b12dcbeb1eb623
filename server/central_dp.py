"""Site-level central DP with Flower's own wrapper and accountant (privacy-mode ``local+central``).

Flower's (1.41-1.42) ``DifferentialPrivacyServerSideFixedClipping`` clips each site's update (its new
weights minus the global ones) to an L2 norm on the server, averages, and adds Gaussian noise of
std ``noise_multiplier * clipping_norm / sites_per_round``; with an accountant it refuses, before
sending anything, a round that would take the cumulative epsilon past ``max_epsilon``
(``PrivacyBudgetExhausted``), and composes one Gaussian release per aggregated round. Its RDP
accountant (``flwr.serverapp.RdpAccountant``, on Google's dp-accounting) takes no credit for
sampling (``no-amplification``) and requires FedAvg's aggregation with equal site weights, and
exactly ``sites_per_round`` replies per release. This module only wires those pieces:

- equal weights: the inner strategy averages by ``SITE_WEIGHT``, which the server sets to 1 on
  every training reply it aggregates (a site cannot up-weight itself), and to the number of
  validation shoppers on evaluation replies (metric averages only);
- a fixed denominator: a sampled site that declines, fails or sends an unusable update is
  aggregated as a data-independent null update (the global weights, each moved by one float32
  step: Flower's clipping divides by the update's norm, so it cannot be exactly zero), so the
  average stays over ``sites_per_round`` sites and the noise still covers any one site;
- the accountant's state is saved in each round's ``round.json`` and restored on resume.

Clipping happens on the server (which central DP trusts), so no client mod is needed; Flower's
client-side variant would need ``fixedclipping_mod`` on the train handler only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.run_config import PrivacyModeConfig
from seqanom_core.privacy import default_delta
from server.records import to_array_record

log = logging.getLogger(__name__)

SITE_WEIGHT = "site-weight"  # the weight the server gives each site's update (always 1 here)
UNIT = "one site (whether it took part, and all of its shoppers) in the federation"
ACCOUNTANT = ("Flower's RDP accountant (flwr.serverapp.RdpAccountant on dp-accounting): one "
              "Gaussian release per round, no credit for sampling (no-amplification), "
              "add-or-remove-one site, equal site weights")


def central_delta(privacy: PrivacyModeConfig) -> float:
    """The site-level delta: as configured, else ``min(1e-5, 1 / (10 * sites per round))``."""
    return privacy.central_delta or default_delta(privacy.central_sites_per_round)


def build_accountant(privacy: PrivacyModeConfig) -> Any:
    """Flower's RDP accountant for the run's central releases (checks the first one fits)."""
    from flwr.serverapp import GaussianPrivacyEvent

    try:
        from flwr.serverapp import RdpAccountant

        accountant = RdpAccountant(PrivacyConfig(
            target_delta=central_delta(privacy),
            population_size=privacy.central_sites_per_round,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=privacy.central_epsilon))
    except ImportError as err:
        raise ConfigError("privacy-mode 'local+central' needs Flower's accountant: "
                          "pip install 'flwr[dp]==1.42.0'") from err
    first = GaussianPrivacyEvent(privacy.central_noise_multiplier,
                                 privacy.central_sites_per_round,
                                 privacy.central_sites_per_round)
    if accountant.would_exceed(first):
        one = _epsilon_of(accountant, first)
        raise ConfigError(
            f"central-epsilon {privacy.central_epsilon} does not cover a single round at "
            f"central-noise-multiplier {privacy.central_noise_multiplier} (one round costs "
            f"epsilon {one:.3f} at delta {central_delta(privacy):.2g})")
    return accountant


def _epsilon_of(accountant: Any, event: Any) -> float:
    probe = type(accountant)(accountant.config)
    probe.compose(event)
    return float(probe.get_privacy_spent().epsilon)


def restore_accountant(accountant: Any, state: dict[str, Any], where: Any) -> None:
    """Continue a run's accounting from a checkpoint's state (a raised budget is allowed)."""
    state = {**state, "config": {**state["config"], "max_epsilon": accountant.config.max_epsilon}}
    try:
        accountant.load_state_dict(state)
    except ValueError as err:
        raise ConfigError(f"{where}: the central-DP settings differ from the checkpoint's "
                          f"(delta and sites per round must stay the same): {err}") from err


def wrap_strategy(strategy: Strategy, privacy: PrivacyModeConfig,
                  accountant: Any) -> DifferentialPrivacyServerSideFixedClipping:
    """``strategy`` (FedAvg or FedProx averaging by SITE_WEIGHT) under Flower's central DP."""
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=privacy.central_noise_multiplier,
        clipping_norm=privacy.central_clipping_norm,
        num_sampled_clients=privacy.central_sites_per_round, accountant=accountant)


def null_update(global_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The global weights moved by one float step each: a tiny update that depends on no data."""
    return {k: np.nextafter(v, np.inf) if v.dtype.kind == "f" else v
            for k, v in global_arrays.items()}


def equal_weight_replies(sent: list[Message], usable: list[Message],
                         global_arrays: dict[str, np.ndarray]) -> tuple[list[Message], list[int]]:
    """Every sampled site once, weight 1: usable replies, and a null update for each other site.

    Returns (replies to aggregate, node ids that were given a null update).
    """
    by_node = {m.metadata.src_node_id: m for m in usable}
    keys = list(usable[0].content[message_keys.METRICS].keys()) if usable else ["num-examples"]
    out, padded = [], []
    for msg in sent:
        nid = msg.metadata.dst_node_id
        reply = by_node.get(nid)
        if reply is None:
            metrics = MetricRecord({k: 0.0 for k in keys})
            content = RecordDict({message_keys.ARRAYS: to_array_record(null_update(global_arrays)),
                                  message_keys.METRICS: metrics})
            reply = Message(content=content, reply_to=msg)
            padded.append(nid)
        reply.content[message_keys.METRICS][SITE_WEIGHT] = 1.0
        out.append(reply)
    return out, padded


def weight_evaluations(replies: list[Message]) -> None:
    """Evaluation metrics are averaged by validation shoppers: SITE_WEIGHT = num-examples."""
    for msg in replies:
        metrics = msg.content[message_keys.METRICS]
        metrics[SITE_WEIGHT] = float(metrics.get("num-examples", 0.0))


def guarantee(privacy: PrivacyModeConfig, accountant: Any) -> dict[str, Any]:
    """The site-level guarantee as Flower's accountant states it now."""
    spent = accountant.get_privacy_spent()
    return {"protects": UNIT, "epsilon": float(spent.epsilon), "delta": float(spent.delta),
            "budget": privacy.central_epsilon, "releases": int(spent.num_releases),
            "accounted_by": ACCOUNTANT,
            "noise_multiplier": privacy.central_noise_multiplier,
            "clipping_norm": privacy.central_clipping_norm,
            "sites_per_round": privacy.central_sites_per_round,
            "clipping": "server-side fixed clipping of each site's update "
                        "(Flower DifferentialPrivacyServerSideFixedClipping)",
            "covers": "the global model weights; not the sites' scalar metrics or calibration "
                      "histograms"}
