"""What a merchant site does in a federated round, as plain library calls (no Flower here).

A site holds its shoppers in three disjoint parts: training shoppers (DP-SGD), validation
shoppers (held out: next-event loss, calibration summaries) and, where labels exist (the
simulation), labelled test shoppers. ``train_round`` runs one round of local training under the
site's privacy ledger; ``evaluate_round`` measures the global model on the site's held-out
shoppers; ``score_summary`` releases the noisy score histogram used for the federated threshold.
Only model arrays and scalars leave these functions.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqanom_core.config import DPConfig, TokenizerConfig
from seqanom_core.errors import ConfigError, DataFileError, PrivacyBudgetExceeded
from seqanom_core.federation.calibration_histograms import score_histogram, stat_histograms
from seqanom_core.federation.global_model import build_federated_model
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.inference import next_event_metrics
from seqanom_core.labels import align_labels, read_labels
from seqanom_core.metrics import auprc, auroc
from seqanom_core.models import model_arrays, resolve_device
from seqanom_core.privacy import default_delta
from seqanom_core.privacy_ledger import PrivacyLedger
from seqanom_core.scoring import ScoreCalibrator, score_statistics
from seqanom_core.sequences import SequenceSet, build_sequences, split_shoppers
from seqanom_core.thresholds import calibrate_threshold
from seqanom_core.training import poisson_schedule, train_model

log = logging.getLogger(__name__)


@dataclass
class SiteData:
    """A site's shoppers: training, validation and (optionally) labelled test sequences."""

    name: str
    train: SequenceSet
    valid: SequenceSet
    test: SequenceSet | None = None
    test_labels: np.ndarray | None = None  # (n_test,) 0/1 aligned with ``test``


@dataclass(frozen=True)
class SitePaths:
    """Where a site's files are (from the node config in deployment, the run dir in simulation)."""

    name: str
    data: Path
    fmt: str = "seqanom"  # format name of the data files
    test: Path | None = None
    labels: Path | None = None
    ledger: Path | None = None


_CACHE: dict[tuple, SiteData] = {}


def _read(path: Path, fmt: str) -> Any:
    from seqanom_core.ingest import read_events

    table, _ = read_events(path, fmt)  # read_events logs its summary (a warning on rejects)
    return table


def load_site(paths: SitePaths, tok: TokenizerConfig, validation_fraction: float,
              seed: int) -> SiteData:
    """Read and tokenise a site's data once per process (cached by path and modification time)."""
    if not paths.data.is_file():
        raise DataFileError(f"{paths.data}: site {paths.name!r} has no data file there")
    key = (str(paths.data), paths.data.stat().st_mtime, str(paths.test), str(paths.labels),
           tok, validation_fraction, seed)
    if key in _CACHE:
        return _CACHE[key]
    seqs = build_sequences(_read(paths.data, paths.fmt), tok)
    if len(seqs) < 4:
        raise ConfigError(f"{paths.data}: site {paths.name!r} has only {len(seqs)} shoppers")
    train, valid = split_shoppers(seqs, validation_fraction, seed)
    site = SiteData(paths.name, train, valid)
    if paths.test is not None and paths.test.is_file():
        site.test = build_sequences(_read(paths.test, paths.fmt), tok)
        if paths.labels is not None and paths.labels.is_file():
            site.test_labels, _ = align_labels(site.test.ids, read_labels(paths.labels),
                                               str(paths.labels))
    log.info("site %s: %d train, %d validation, %d test shoppers", paths.name, len(train),
             len(valid), 0 if site.test is None else len(site.test))
    _CACHE[key] = site
    return site


def site_seed(seed: int, site_name: str, server_round: int) -> int:
    """A seed for one site's training in one round, mixed from the run's seed, the site's name
    and the round (SeedSequence), so that no two sites or rounds share one."""
    words = [seed, server_round, *site_name.encode("utf-8")]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0]) >> 1


@dataclass
class RoundOutcome:
    """Result of one local training round (arrays is None when the site declined)."""

    arrays: dict[str, np.ndarray] | None
    metrics: dict[str, float]
    ledger: PrivacyLedger | None
    declined_reason: str = ""


def train_round(
    site: SiteData, settings: RunConfig, arrays: dict[str, np.ndarray], *,
    ledger: PrivacyLedger | None, server_round: int, rounds_left: int, proximal_mu: float = 0.0,
    run_id: str = "",
) -> RoundOutcome:
    """One round of local training from the global ``arrays``, within the site's budget."""
    # every site and round its own seed (shuffles, windows, dropout; and the DP seed, when one
    # is set): sites that shared one would draw the same batches and the same noise
    cfg = dataclasses.replace(settings.train, seed=site_seed(settings.train.seed, site.name,
                                                             server_round))
    n = len(site.train)
    # the steps of this round: what is accounted under DP and what the lr schedule advances by
    q, steps = poisson_schedule(n, cfg.batch_size, cfg.epochs)
    # the learning-rate schedule spans the whole run, step by step, as one training call would
    total_rounds = server_round - 1 + max(1, rounds_left)
    span = ((server_round - 1) * steps, total_rounds * steps)
    device = resolve_device(cfg.device)
    model = build_federated_model(settings, arrays, site.train.source)
    metrics: dict[str, float] = {"num-examples": float(n), "declined": 0.0}
    if cfg.dp is not None:
        if ledger is None:
            raise ConfigError("DP training needs a privacy ledger")
        ledger.state.require(cfg.dp.accountant, f"site {site.name}'s privacy ledger")
        delta = ledger.fix_delta(cfg.dp.delta or ledger.delta or default_delta(n))
        try:
            if cfg.dp.noise_multiplier is not None:
                sigma = cfg.dp.noise_multiplier
            else:
                sigma = ledger.plan_noise(q, steps, rounds_left, max_noise=settings.max_noise)
            ledger.check_affordable(sigma, q, steps)
        except PrivacyBudgetExceeded as err:
            log.warning("site %s declines round %d: %s", site.name, server_round, err)
            return RoundOutcome(None, {"num-examples": 0.0, "declined": 1.0,
                                       "epsilon": ledger.spent(), "delta": delta,
                                       "budget": ledger.budget or 0.0}, ledger, str(err))
        dp_seed = (None if cfg.dp.seed is None
                   else site_seed(cfg.dp.seed, site.name, server_round))
        cfg = dataclasses.replace(cfg, dp=DPConfig(noise_multiplier=sigma, delta=delta,
                                                   max_grad_norm=cfg.dp.max_grad_norm,
                                                   seed=dp_seed, accountant=cfg.dp.accountant))
    result = train_model(model, site.train, cfg, device,
                         accountant_state=ledger.state if (ledger and cfg.dp) else None,
                         progress=False, proximal_mu=proximal_mu, schedule_span=span)
    metrics["train-loss"] = float(result.epoch_losses[-1])
    if result.accountant_state is not None and ledger is not None:
        ledger.record(result.accountant_state, run=run_id, round=server_round,
                      noise_multiplier=result.noise_multiplier, steps=result.steps)
        metrics.update({"epsilon": ledger.spent(), "delta": float(ledger.delta or 0.0),
                        "noise-multiplier": float(result.noise_multiplier or 0.0),
                        "budget": float(ledger.budget or 0.0)})
    return RoundOutcome(model_arrays(model), metrics, ledger)


@dataclass
class Evaluation:
    """A site's measurements of a global model: scalars and calibration histograms."""

    metrics: dict[str, float]
    stat_histograms: np.ndarray  # (n_stats, n_bins), noisy
    valid_stats: np.ndarray  # (n_valid, n_stats): per shopper, stays at the site


def evaluate_round(site: SiteData, settings: RunConfig, arrays: dict[str, np.ndarray], *,
                   noise_std: float, seed: int | None) -> Evaluation:
    """Next-event loss/accuracy on validation shoppers, local AUROC/AUPRC where labelled."""
    device = resolve_device(settings.train.device)
    model = build_federated_model(settings, arrays, site.valid.source)
    ev, stats = score_statistics(model, site.valid, device)
    metrics = {"num-examples": float(len(site.valid)), **next_event_metrics(ev)}
    local = ScoreCalibrator().fit(stats)
    valid_scores, _ = local.score(stats)
    metrics["site-threshold"] = calibrate_threshold(valid_scores, settings.federation.alert_rate)
    if site.test is not None and site.test_labels is not None:
        t_scores, _ = local.score(score_statistics(model, site.test, device)[1])
        metrics["auroc"] = auroc(site.test_labels, t_scores)
        metrics["auprc"] = auprc(site.test_labels, t_scores)
        metrics["num-test"] = float(len(site.test))
        metrics["alert-rate-test"] = float(np.mean(t_scores > metrics["site-threshold"]))
    return Evaluation(metrics, stat_histograms(stats, noise_std, seed), stats)


def score_summary(site: SiteData, settings: RunConfig, arrays: dict[str, np.ndarray],
                  calibrator: ScoreCalibrator, *, noise_std: float, seed: int | None,
                  valid_stats: np.ndarray | None = None) -> np.ndarray:
    """Noisy histogram of the validation shoppers' scores under the federated calibration.

    ``valid_stats``: the statistics ``evaluate_round`` computed for these same ``arrays``
    (saves scoring the validation shoppers again)."""
    if valid_stats is None:
        device = resolve_device(settings.train.device)
        model = build_federated_model(settings, arrays, site.valid.source)
        _, valid_stats = score_statistics(model, site.valid, device)
    scores, _ = calibrator.score(valid_stats)
    return score_histogram(scores, noise_std, seed)
