"""A site's side of SecAgg+ (privacy-mode ``local+secagg``): Flower's legacy stack, inside our app.

In Flower 1.41 SecAgg+ exists only for the legacy stack: a ``NumPyClient`` behind
``secaggplus_mod``. All four protocol stages (setup, share keys, collect masked vectors, unmask)
reach a site as *train* messages carrying a ``secaggplus_configs`` record, so the Message-API
train handler of ``client/app.py`` hands exactly those to ``secagg_app``, the legacy ClientApp
below; Flower's mod keeps the protocol state in the node's ``context.state``.

What the site sends: its model *update* (local weights minus global weights), which the mod
multiplies by the site's weight / ``secagg-max-weight``, clips to +-``secagg-clipping-range``,
quantises to ``secagg-quantization-range`` levels and masks. The weight is the number of training
shoppers, capped at ``secagg-max-weight`` (so the weighted entries never overflow the range);
a site that declines (privacy budget) sends a zero update with weight 0 and so counts for
nothing. Updates, not weights, are summed because they are small and centred on 0, which is what
the fixed clipping range suits; the number of entries the range clipped is reported
(``secagg-clipped``) so a too-small range shows. The training itself, the privacy ledger and
the local DP are exactly those of the Message-API path (``train_site``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.site_resources import train_site
from seqanom_core.federation import message_keys

log = logging.getLogger(__name__)


def is_secagg_message(msg: Message) -> bool:
    """A message of Flower's SecAgg+ protocol (any stage)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


class SecAggSite(NumPyClient):
    """The legacy-stack view of a site: ``fit`` returns its update, weight and scalar metrics."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters: list[np.ndarray], config: dict
            ) -> tuple[list[np.ndarray], int, dict]:
        """One round of local DP training; the update goes to secaggplus_mod, never in clear."""
        names = json.loads(str(config[message_keys.ARRAY_NAMES]))
        if len(names) != len(parameters):
            raise ValueError(f"{len(parameters)} arrays for {len(names)} names")
        global_arrays = dict(zip(names, parameters, strict=True))
        paths, settings, out = train_site(self.context, global_arrays, config)
        metrics: dict = {**out.metrics, message_keys.SITE_NAME: paths.name}
        if out.arrays is None:
            metrics.update({"secagg-weight": 0.0, "secagg-clipped": 0.0})
            return [np.zeros_like(v) for v in parameters], 0, metrics
        update = [out.arrays[k].astype(v.dtype) - v for k, v in global_arrays.items()]
        if not all(np.isfinite(u).all() for u in update):
            raise ValueError(f"site {paths.name}: non-finite model update, not sent")
        p = settings.privacy
        weight = max(1, int(min(out.metrics["num-examples"], p.secagg_max_weight)))
        scale = weight / p.secagg_max_weight
        clipped = sum(int((np.abs(u) * scale > p.secagg_clipping_range).sum()) for u in update)
        if clipped:
            log.warning("site %s: %d update entries exceed secagg-clipping-range %g and are "
                        "clipped by SecAgg+", paths.name, clipped, p.secagg_clipping_range)
        metrics.update({"secagg-weight": float(weight), "secagg-clipped": float(clipped)})
        return update, weight, metrics


def _client_fn(context: Context):  # noqa: ANN202 (Flower's legacy Client type)
    return SecAggSite(context).to_client()


secagg_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
