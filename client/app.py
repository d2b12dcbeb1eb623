"""The seqanom ClientApp: one per merchant site (a thin adapter over ``seqanom_core.site``).

Node config (deployment, ``flower-supernode --node-config``): ``data-path`` (the site's events),
``format`` (default ``seqanom``, the project's own format), ``ledger-path`` (privacy ledger file),
``privacy-budget`` (epsilon budget of this site, overrides the run's ``epsilon``), ``device``
("auto", "cpu", "cuda"), ``site-name``, and optionally ``test-path``/``labels-path`` (labelled
shoppers for AUROC). In simulation the site is ``partition-id``: its files are under the run
config's ``data-dir``/site-<id>/ and its ledger is ``ledger-dir``/site-<id>.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.records import from_array_record, to_array_record, to_metric_record
from seqanom_core import messages as K
from seqanom_core.privacy_ledger import PrivacyLedger, more_recent
from seqanom_core.run_config import RunSettings, settings_from_run_config
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.site import SitePaths, evaluate_round, load_site, score_summary, train_round

log = logging.getLogger(__name__)
app = ClientApp()

_NODE_KEYS = {"data-path", "format", "ledger-path", "privacy-budget", "device", "site-name",
              "test-path", "labels-path", "partition-id", "num-partitions"}
_LEDGER_STATE = "privacy-ledger"


def site_setup(context: Context) -> tuple[SitePaths, RunSettings]:
    """The site's files and the run's typed settings (node config overrides budget, device)."""
    node = dict(context.node_config)
    unknown = sorted(set(node) - _NODE_KEYS)
    if unknown:
        raise ValueError(f"unknown node config keys {unknown}; known: {sorted(_NODE_KEYS)}")
    settings = settings_from_run_config(dict(context.run_config))
    fed = settings.federation
    if "data-path" in node:
        name = str(node.get("site-name", Path(str(node["data-path"])).stem))
        opt = {k: Path(str(node[k])) for k in ("test-path", "labels-path", "ledger-path") if k in node}
        paths = SitePaths(name, Path(str(node["data-path"])), str(node.get("format", "seqanom")),
                          opt.get("test-path"), opt.get("labels-path"), opt.get("ledger-path"))
    elif "partition-id" in node and fed.data_dir:
        name = f"site-{int(node['partition-id'])}"
        root = Path(fed.data_dir) / name
        ledger = Path(fed.ledger_dir) / f"{name}.json" if fed.ledger_dir else None
        paths = SitePaths(name, root / "train.parquet", "seqanom", root / "test.parquet",
                          root / "labels.csv", ledger)
    else:
        raise ValueError("node config needs data-path (deployment), or partition-id with the "
                         "run config's data-dir (simulation)")
    if "privacy-budget" in node and settings.train.dp is not None:
        settings = dataclasses.replace(settings, budget=float(node["privacy-budget"]))
    if "device" in node:
        settings = dataclasses.replace(
            settings, train=dataclasses.replace(settings.train, device=str(node["device"])))
    return paths, settings


def _restore_ledger(context: Context, paths: SitePaths, budget: float | None) -> PrivacyLedger:
    """The site's ledger: the longer of the run's state copy and the file (never forget spend)."""
    in_state = None
    if _LEDGER_STATE in context.state:
        in_state = PrivacyLedger.from_json(str(context.state[_LEDGER_STATE]["json"]))
    on_disk = PrivacyLedger.open(paths.ledger, budget=budget, site=paths.name)
    ledger = more_recent(in_state, on_disk) or on_disk
    ledger.budget = budget
    ledger.site = ledger.site or paths.name
    return ledger


def _keep_ledger(context: Context, paths: SitePaths, ledger: PrivacyLedger) -> None:
    context.state[_LEDGER_STATE] = ConfigRecord({"json": ledger.to_json()})
    if paths.ledger is not None:
        ledger.save(paths.ledger)


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


def _reply(msg: Message, content: RecordDict, site: str) -> Message:
    content[K.SITE] = ConfigRecord({"name": site})
    return Message(content=content, reply_to=msg)


@app.train()
@_contained
def train(msg: Message, context: Context) -> Message:
    """Local DP training of the global model for one round; declines when over budget."""
    paths, settings = site_setup(context)
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    cfg = msg.content[K.CONFIG]
    ledger = _restore_ledger(context, paths, settings.budget) if settings.train.dp else None
    out = train_round(
        site, settings, from_array_record(msg.content[K.ARRAYS]), ledger=ledger,
        server_round=int(cfg[K.SERVER_ROUND]), rounds_left=int(cfg.get(K.ROUNDS_LEFT, 1)),
        proximal_mu=float(cfg.get(K.PROXIMAL_MU, 0.0)), run_id=str(cfg.get(K.RUN_ID, "")),
    )
    if ledger is not None:
        _keep_ledger(context, paths, ledger)
    content = RecordDict({K.METRICS: to_metric_record(out.metrics)})
    if out.arrays is not None:
        content[K.ARRAYS] = to_array_record(out.arrays)
    return _reply(msg, content, paths.name)


@app.evaluate()
@_contained
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
@_contained
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
