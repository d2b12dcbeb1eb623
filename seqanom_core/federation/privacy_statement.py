"""The privacy statement of a federated run: which guarantees held, for what unit, how accounted.

Written into every checkpoint's ``round.json`` and model metadata, and from there into the
simulation report. Numbers are copied from the accountants (Opacus per site, Flower's for
central DP), never recomputed here.
"""

from __future__ import annotations

from typing import Any

from seqanom_core.federation.releases import inventory
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.privacy import UNIT, accountant_name, noise_source

SECAGG_PROTOCOL = "SecAgg+ (Flower SecAggPlusWorkflow / secaggplus_mod, legacy stack)"
def shopper_accountant(accountant: str) -> str:
    """How the per-site shopper-level epsilon is accounted (``accountant``: "rdp" or "prv")."""
    return (f"{accountant_name(accountant)} accountant per site, cumulative over the site's "
            "ledger (all runs it took part in, every kind of release), Poisson sampling of "
            "shoppers for DP-SGD")
COVERS = ("everything a site sends (seqanom_core/federation/releases.py): model updates "
          "(DP-SGD), calibration histograms and the training count (Gaussian mechanisms), all "
          "accounted in the site's ledger; the rest is public (site name, budget, error types)")
COVERS_NO_DP = "nothing: dp = false (model updates, histograms and counts are sent without DP)"


def releases_statement(site_by_kind: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """``privacy.releases``: every kind of value a site sends, with the epsilon of its kind alone
    (worst site) when it is a mechanism's output, ``derived`` when it is computed from such
    outputs (no cost of its own), or its public reason."""
    out: list[dict[str, Any]] = []
    for listed in inventory():
        row: dict[str, Any] = dict(listed)
        kind = row.get("kind")
        if row["protection"] == "accounted" and kind is not None and not row.get("derived"):
            row["epsilon_of_kind"] = max((k.get(kind, 0.0) for k in site_by_kind.values()),
                                         default=0.0)
        out.append(row)
    return out


def privacy_statement(settings: RunConfig, site_epsilon: dict[str, float],
                      site_delta: dict[str, float], rounds_done: int,
                      central: dict[str, Any] | None = None,
                      site_by_kind: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The guarantees the global model carries after ``rounds_done`` rounds, stated exactly."""
    p, dp = settings.privacy, settings.train.dp
    out: dict[str, Any] = {"mode": p.mode, "dp": dp is not None, "rounds": rounds_done}
    guarantees: list[dict[str, Any]] = []
    if dp is not None:
        shopper = {"level": "shopper", "protects": UNIT,
                   "epsilon": max(site_epsilon.values(), default=0.0),
                   "delta": max(site_delta.values(), default=None),
                   "epsilon_per_site": dict(site_epsilon), "delta_per_site": dict(site_delta),
                   "budget": settings.budget, "accounted_by": shopper_accountant(dp.accountant),
                   "covers": COVERS,
                   "max_grad_norm": dp.max_grad_norm,
                   "randomness": noise_source(dp.seed) + "; every site and round its own"}
        guarantees.append(shopper)
        # the shopper-level numbers stay at the top level too (what `seqanom simulate` prints)
        out.update({"unit": UNIT, "epsilon": shopper["epsilon"], "delta": shopper["delta"],
                    "epsilon_per_site": dict(site_epsilon), "delta_per_site": dict(site_delta),
                    "budget": settings.budget, "accountant": shopper_accountant(dp.accountant),
                    "max_grad_norm": dp.max_grad_norm, "randomness": shopper["randomness"]})
    if central is not None:
        guarantees.append({"level": "site", **central})
    out["guarantees"] = guarantees
    out["server_saw_individual_updates"] = not p.secagg
    if p.secagg:
        out["secure_aggregation"] = {
            "protocol": SECAGG_PROTOCOL,
            "server_sees": "the weighted sum of the sites' masked, quantised model updates; "
                           "each site's scalar metrics (epsilon, noisy weight) in clear",
            "num_shares": p.secagg_num_shares,
            "reconstruction_threshold": p.secagg_reconstruction_threshold,
            "clipping_range": p.secagg_clipping_range,
            "quantization_range": p.secagg_quantization_range,
            "modulus_range": p.secagg_modulus_range, "max_weight": p.secagg_max_weight}
    out["covers"] = COVERS if dp is not None else COVERS_NO_DP
    if dp is not None:
        out["releases"] = releases_statement(site_by_kind or {})
        per_site = dict(site_by_kind or {})
        kinds = sorted({k for v in per_site.values() for k in v})
        out["epsilon_by_kind"] = {k: max(v.get(k, 0.0) for v in per_site.values()) for k in kinds}
        out["epsilon_by_kind_per_site"] = per_site
    return out
