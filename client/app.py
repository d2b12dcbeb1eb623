"""The seqanom ClientApp: one per merchant site (a thin adapter over ``seqanom_core.site``).

Node config keys: ``client/site_setup.py``. One ClientApp serves every privacy mode: the train
handler hands SecAgg+ protocol messages (``privacy-mode = "local+secagg"``, Flower's legacy
stack) to the inner legacy ClientApp of ``client/secagg.py``; everything else is the Message API.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.records import from_array_record, to_array_record, to_metric_record
from client.secagg import is_secagg_message, secagg_app
from client.site_setup import site_setup, train_site
from seqanom_core import messages as K
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.site import evaluate_round, load_site, score_summary

log = logging.getLogger(__name__)
app = ClientApp()


def _reply(msg: Message, content: RecordDict, site: str) -> Message:
    content[K.SITE] = ConfigRecord({"name": site})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local DP training of the global model for one round; declines when over budget.

    SecAgg+ messages (all four protocol stages arrive as train messages) go to the legacy app.
    """
    if is_secagg_message(msg):
        return secagg_app(msg, context)
    paths, _, out = train_site(context, from_array_record(msg.content[K.ARRAYS]),
                               msg.content[K.CONFIG])
    content = RecordDict({K.METRICS: to_metric_record(out.metrics)})
    if out.arrays is not None:
        content[K.ARRAYS] = to_array_record(out.arrays)
    return _reply(msg, content, paths.name)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Validation loss/accuracy (+ AUROC/AUPRC where labelled) and calibration histograms."""
    paths, settings = site_setup(context)
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    cfg = msg.content[K.CONFIG]
    seed = settings.train.seed * 7919 + int(cfg[K.SERVER_ROUND])
    ev = evaluate_round(site, settings, from_array_record(msg.content[K.ARRAYS]),
                        noise_std=settings.federation.calibration_noise, seed=seed)
    content = RecordDict({K.METRICS: to_metric_record(ev.metrics),
                          K.HISTOGRAMS: to_array_record({K.STAT_HIST: ev.stat_histograms})})
    return _reply(msg, content, paths.name)


@app.query(K.SCORE_SUMMARY)
def query_score_summary(msg: Message, context: Context) -> Message:
    """Noisy histogram of validation scores under the federated calibration (for the threshold)."""
    paths, settings = site_setup(context)
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    cfg = msg.content[K.CONFIG]
    calibrator = ScoreCalibrator.from_dict(json.loads(str(cfg[K.CALIBRATOR])))
    seed = settings.train.seed * 7919 + int(cfg[K.SERVER_ROUND]) + 1
    hist = score_summary(site, settings, from_array_record(msg.content[K.ARRAYS]), calibrator,
                         noise_std=settings.federation.calibration_noise, seed=seed)
    content = RecordDict({K.METRICS: to_metric_record({"num-examples": float(len(site.valid))}),
                          K.HISTOGRAMS: to_array_record({K.SCORE_HIST: hist})})
    return _reply(msg, content, paths.name)
