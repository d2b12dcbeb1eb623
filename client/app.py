"""The seqanom ClientApp: one per merchant site (a thin adapter over ``seqanom_core.federation.site_round``).

Node config keys: ``client/site_resources.py``. One ClientApp serves every privacy mode: the train
handler hands SecAgg+ protocol messages (``privacy-mode = "local+secagg"``, Flower's legacy
stack) to the inner legacy ClientApp of ``client/secagg.py``; everything else is the Message API.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.secagg import is_secagg_message, secagg_app
from client.site_resources import (
    keep_locally,
    policy_declined,
    site_ledger,
    site_setup,
    train_site,
)
from seqanom_core.federation import message_keys
from seqanom_core.federation.calibration_histograms import histogram_seed
from seqanom_core.federation.records import as_arrays, as_metrics, contiguous
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.federation.site_round import (
    ReleaseContext,
    evaluate_round,
    load_site,
    score_summary,
)
from seqanom_core.models import arrays_digest
from seqanom_core.scoring import ScoreCalibrator

log = logging.getLogger(__name__)
app = ClientApp()


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named arrays -> ArrayRecord (names and order kept)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in contiguous(arrays).items()})


def to_metric_record(metrics: dict[str, float]) -> MetricRecord:
    """Scalar metrics -> MetricRecord (NaN kept as NaN floats)."""
    return MetricRecord(as_metrics(metrics))


class SiteError(RuntimeError):
    """What the server learns of a failure at a site: the handler and the error type only."""


def _contained(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Errors stay at the site: Flower sends an exception's text to the server as the error
    reason, and a data error may quote a shopper id or a file path. The full error goes to the
    site's own log (and as the cause in its traceback); the reply names the error type only."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:
            log.error("%s failed at this site: %s: %s", handler.__name__, type(err).__name__, err)
            raise SiteError(f"{handler.__name__} failed at the site with {type(err).__name__}; "
                            "the details are in the site's log") from err

    return wrapped


_VALID_STATS, _VALID_STATS_MODEL = "valid-stats", "valid-stats-model"


def _kept_valid_stats(context: Context, arrays: dict) -> np.ndarray | None:
    """The validation statistics the evaluate call computed, if it scored these same arrays."""
    if _VALID_STATS not in context.state or _VALID_STATS_MODEL not in context.state:
        return None
    if str(context.state[_VALID_STATS_MODEL]["digest"]) != arrays_digest(arrays):
        return None
    return as_arrays(context.state[_VALID_STATS])["stats"]


def _release_context(settings: RunConfig, site: str, cfg: ConfigRecord,
                     query: int) -> ReleaseContext:
    """Run, round and histogram noise seed of a calibration release (the seed is None, from the
    OS, unless the run sets a DP seed)."""
    r = int(cfg[message_keys.SERVER_ROUND])
    return ReleaseContext(str(cfg.get(message_keys.RUN_ID, "")), r,
                          histogram_seed(settings.dp_seed, site, r, query))


def _reply(msg: Message, content: RecordDict, site: str) -> Message:
    content[message_keys.SITE] = ConfigRecord({"name": site})
    return Message(content=content, reply_to=msg)


@app.train()
@_contained
def train(msg: Message, context: Context) -> Message:
    """Local DP training of the global model for one round; declines when over budget.

    SecAgg+ messages (all four protocol stages arrive as train messages) go to the legacy app.
    """
    if is_secagg_message(msg):
        return secagg_app(msg, context)
    paths, _, out = train_site(context, as_arrays(msg.content[message_keys.ARRAYS]),
                               msg.content[message_keys.CONFIG])
    content = RecordDict({message_keys.METRICS: to_metric_record(out.metrics)})
    if out.arrays is not None:
        content[message_keys.ARRAYS] = to_array_record(out.arrays)
    return _reply(msg, content, paths.name)


@app.evaluate()
@_contained
def evaluate(msg: Message, context: Context) -> Message:
    """Query 1: noisy statistic histograms (accounted under DP); the site's own measurements of
    the model (loss, accuracy, AUROC) stay in its local log."""
    paths, settings, refusal = site_setup(context)
    if refusal:
        return _reply(msg, RecordDict({message_keys.METRICS: to_metric_record(
            policy_declined(refusal))}), paths.name)
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    cfg = msg.content[message_keys.CONFIG]
    arrays = as_arrays(msg.content[message_keys.ARRAYS])
    with site_ledger(context, paths, settings) as ledger:  # written before the reply
        ev = evaluate_round(site, settings, arrays, ledger=ledger,
                            ctx=_release_context(settings, paths.name, cfg, 0))
    keep_locally(paths, "evaluate", int(cfg[message_keys.SERVER_ROUND]), ev.local)
    # kept (at the site only) for this round's score-summary query on the same model
    context.state[_VALID_STATS] = to_array_record({"stats": ev.valid_stats})
    context.state[_VALID_STATS_MODEL] = ConfigRecord({"digest": arrays_digest(arrays)})
    content = RecordDict({message_keys.METRICS: to_metric_record(ev.metrics)})
    if ev.stat_histograms is not None:
        content[message_keys.HISTOGRAMS] = to_array_record(
            {message_keys.STAT_HIST: ev.stat_histograms})
    return _reply(msg, content, paths.name)


@app.query(message_keys.SCORE_SUMMARY)
@_contained
def query_score_summary(msg: Message, context: Context) -> Message:
    """Query 2: noisy histogram of validation scores under the federated calibration."""
    paths, settings, refusal = site_setup(context)
    if refusal:
        return _reply(msg, RecordDict({message_keys.METRICS: to_metric_record(
            policy_declined(refusal))}), paths.name)
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    cfg = msg.content[message_keys.CONFIG]
    calibrator = ScoreCalibrator.from_dict(json.loads(str(cfg[message_keys.CALIBRATOR])))
    arrays = as_arrays(msg.content[message_keys.ARRAYS])
    with site_ledger(context, paths, settings) as ledger:  # written before the reply
        metrics, hist = score_summary(site, settings, arrays, calibrator, ledger=ledger,
                                      ctx=_release_context(settings, paths.name, cfg, 1),
                                      valid_stats=_kept_valid_stats(context, arrays))
    content = RecordDict({message_keys.METRICS: to_metric_record(metrics)})
    if hist is not None:
        content[message_keys.HISTOGRAMS] = to_array_record({message_keys.SCORE_HIST: hist})
    return _reply(msg, content, paths.name)
