"""The privacy statement of a federated run: which guarantees held, for what unit, how accounted.

Written into every checkpoint's ``round.json`` and model metadata, and from there into the
simulation report. Numbers are copied from the accountants (Opacus per site, Flower's for
central DP), never recomputed here.
"""

from __future__ import annotations

from typing import Any

from seqanom_core.federation.run_config import RunConfig
from seqanom_core.privacy import UNIT, noise_source

SECAGG_PROTOCOL = "SecAgg+ (Flower SecAggPlusWorkflow / secaggplus_mod, legacy stack)"
SHOPPER_ACCOUNTANT = ("Opacus RDP accountant per site, cumulative over the site's ledger (all "
                      "runs it took part in), Poisson sampling of shoppers")
COVERS = ("model weights sent by each site; the calibration histograms are noised but not "
          "accounted in epsilon")


def privacy_statement(settings: RunConfig, site_epsilon: dict[str, float],
                      site_delta: dict[str, float], rounds_done: int,
                      central: dict[str, Any] | None = None) -> dict[str, Any]:
    """The guarantees the global model carries after ``rounds_done`` rounds, stated exactly."""
    p, dp = settings.privacy, settings.train.dp
    out: dict[str, Any] = {"mode": p.mode, "dp": dp is not None, "rounds": rounds_done}
    guarantees: list[dict[str, Any]] = []
    if dp is not None:
        shopper = {"level": "shopper", "protects": UNIT,
                   "epsilon": max(site_epsilon.values(), default=0.0),
                   "delta": max(site_delta.values(), default=None),
                   "epsilon_per_site": dict(site_epsilon), "delta_per_site": dict(site_delta),
                   "budget": settings.budget, "accounted_by": SHOPPER_ACCOUNTANT,
                   "max_grad_norm": dp.max_grad_norm,
                   "randomness": noise_source(dp.seed) + "; every site and round its own"}
        guarantees.append(shopper)
        # the shopper-level numbers stay at the top level too (what `seqanom simulate` prints)
        out.update({"unit": UNIT, "epsilon": shopper["epsilon"], "delta": shopper["delta"],
                    "epsilon_per_site": dict(site_epsilon), "delta_per_site": dict(site_delta),
                    "budget": settings.budget, "accountant": SHOPPER_ACCOUNTANT,
                    "max_grad_norm": dp.max_grad_norm, "randomness": shopper["randomness"]})
    if central is not None:
        guarantees.append({"level": "site", **central})
    out["guarantees"] = guarantees
    out["server_saw_individual_updates"] = not p.secagg
    if p.secagg:
        out["secure_aggregation"] = {
            "protocol": SECAGG_PROTOCOL,
            "server_sees": "the weighted sum of the sites' masked, quantised model updates; "
                           "each site's scalar metrics (loss, epsilon, weight) in clear",
            "num_shares": p.secagg_num_shares,
            "reconstruction_threshold": p.secagg_reconstruction_threshold,
            "clipping_range": p.secagg_clipping_range,
            "quantization_range": p.secagg_quantization_range,
            "modulus_range": p.secagg_modulus_range, "max_weight": p.secagg_max_weight}
    out["covers"] = COVERS
    return out
