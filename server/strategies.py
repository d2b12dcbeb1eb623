"""The aggregation strategy named in the run config, built from Flower's own strategies."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.run_config import FederationConfig, PrivacyModeConfig
from server import central_dp


def build_strategy(fed: FederationConfig, privacy: PrivacyModeConfig | None = None) -> Strategy:
    """FedAvg, FedProx, FedAdam, FedMedian, FedTrimmedAvg or Krum with the run's settings.

    With ``privacy-mode = "local+central"``: FedAvg or FedProx sampling exactly
    ``central-sites-per-round`` sites and averaging them with equal weights, inside Flower's
    central-DP wrapper with its accountant. (Under SecAgg+ this strategy only runs evaluation.)
    """
    common = dict(fraction_train=fed.fraction_train, fraction_evaluate=1.0,
                  min_train_nodes=fed.min_sites, min_evaluate_nodes=fed.min_sites,
                  min_available_nodes=fed.min_sites, arrayrecord_key=message_keys.ARRAYS,
                  configrecord_key=message_keys.CONFIG)
    if privacy is not None and privacy.central:
        # a fraction too small to round up to a site: FedAvg then samples exactly min_train_nodes
        common.update(fraction_train=1e-9, min_train_nodes=privacy.central_sites_per_round,
                      weighted_by_key=central_dp.SITE_WEIGHT)
        inner = _build(fed, common)
        return central_dp.wrap_strategy(inner, privacy, central_dp.build_accountant(privacy))
    return _build(fed, common)


def _build(fed: FederationConfig, common: dict) -> Strategy:
    name = fed.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=fed.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, eta=fed.server_lr)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=fed.trim_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=fed.krum_byzantine)
    raise ConfigError(f"unknown strategy {name!r}")
