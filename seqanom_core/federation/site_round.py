"""What a merchant site does in a federated round, as plain library calls (no Flower here).

A site holds its shoppers in three disjoint parts: training shoppers (DP-SGD), validation
shoppers (held out, split by a keyed hash of the shopper id) and, where labels exist (the
simulation), labelled test shoppers. ``train_round`` runs one round of local training under the
site's privacy ledger; ``evaluate_round`` and ``score_summary`` release the noisy calibration
histograms of a global model. Under DP every value these return for sending is an accounted
release or a function of them (``releases.py``); what the site measures besides (losses,
accuracy, AUROC, its own threshold) is returned apart, to stay in its own log.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqanom_core.config import DPConfig, TokenizerConfig
from seqanom_core.errors import ConfigError, DataFileError, PrivacyBudgetExceeded
from seqanom_core.federation.calibration_budget import (
    CalibrationNoise,
    calibration_noise,
    count_and_noise,
    epsilon_by_kind,
    released_count,
    reserved_for_run,
)
from seqanom_core.federation.calibration_histograms import (
    histogram_seed,
    score_histogram,
    stat_histograms,
)
from seqanom_core.federation.global_model import build_federated_model, global_arrays
from seqanom_core.federation.releases import ReleaseKind
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.federation.site_cache import cache_dir, cache_key, read_cached, write_cached
from seqanom_core.inference import next_event_metrics
from seqanom_core.labels import align_labels, read_labels
from seqanom_core.metrics import auprc, auroc
from seqanom_core.models import resolve_device
from seqanom_core.privacy_ledger import PrivacyLedger
from seqanom_core.scoring import ScoreCalibrator, score_statistics
from seqanom_core.sequences import SequenceSet, build_sequences, split_shoppers_by_id
from seqanom_core.thresholds import calibrate_threshold
from seqanom_core.training import poisson_schedule, train_model

if TYPE_CHECKING:
    import torch

    from seqanom_core.models import NextEventModel

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
    new_ledger: bool = False  # a missing ledger where the site kept one may start anew

    @property
    def local_log(self) -> Path | None:
        """The site's own log of what it measures but never sends (beside its ledger)."""
        return None if self.ledger is None else self.ledger.with_suffix(".local.jsonl")


_CACHE: dict[tuple, SiteData] = {}


def _read(path: Path, fmt: str) -> Any:
    from seqanom_core.ingest import read_events

    table, _ = read_events(path, fmt)  # read_events logs its summary (a warning on rejects)
    return table


def load_site(paths: SitePaths, tok: TokenizerConfig, validation_fraction: float,
              seed: int) -> SiteData:
    """Read and tokenise a site's data once per process (cached by path and modification time),
    and once per site where it keeps a ledger (``site_cache``: every deployed message is a new
    process)."""
    if not paths.data.is_file():
        raise DataFileError(f"{paths.data}: site {paths.name!r} has no data file there")
    key = (str(paths.data), paths.data.stat().st_mtime, str(paths.test), str(paths.labels),
           tok, validation_fraction, seed)
    if key in _CACHE:
        return _CACHE[key]
    disk = cache_dir(paths.ledger)
    disk_key = cache_key([paths.data, paths.test, paths.labels], paths.fmt, tok,
                         validation_fraction, seed)
    cached = read_cached(disk, disk_key) if disk is not None else None
    if cached is not None:
        site = SiteData(paths.name, cached["train"], cached["valid"], cached["test"],
                        cached["test_labels"])
        log.info("site %s: tokenised shoppers read from %s", paths.name, disk)
        _CACHE[key] = site
        return site
    seqs = build_sequences(_read(paths.data, paths.fmt), tok)
    if len(seqs) < 4:
        raise ConfigError(f"{paths.data}: site {paths.name!r} has only {len(seqs)} shoppers")
    train, valid = split_shoppers_by_id(seqs, validation_fraction, seed)
    site = SiteData(paths.name, train, valid)
    if paths.test is not None and paths.test.is_file():
        site.test = build_sequences(_read(paths.test, paths.fmt), tok)
        if paths.labels is not None and paths.labels.is_file():
            site.test_labels, _ = align_labels(site.test.ids, read_labels(paths.labels),
                                               str(paths.labels))
    log.info("site %s: %d train, %d validation, %d test shoppers", paths.name, len(train),
             len(valid), 0 if site.test is None else len(site.test))
    if disk is not None:
        try:
            write_cached(disk, disk_key, {"train": site.train, "valid": site.valid,
                                          "test": site.test}, site.test_labels)
        except OSError as err:  # a cache the site cannot write costs time, not the round
            log.warning("site %s: tokenised shoppers not cached in %s (%s)", paths.name, disk, err)
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
    metrics: dict[str, float]  # what the site sends (releases.py)
    ledger: PrivacyLedger | None
    declined_reason: str = ""
    local: dict[str, float] = dataclasses.field(default_factory=dict)  # kept at the site


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
    public_size = None  # under DP: the released count, which the schedule is computed from
    device = resolve_device(cfg.device)
    model = build_federated_model(settings, arrays, site.train.source)
    metrics: dict[str, float] = {"num-examples": float(n), "declined": 0.0}
    local: dict[str, float] = {}
    if cfg.dp is not None:
        if ledger is None:
            raise ConfigError("DP training needs a privacy ledger")
        ledger.state.require(cfg.dp.accountant, f"site {site.name}'s privacy ledger")
        fed, budget = settings.federation, settings.budget
        try:
            # the count is released (noisy, accounted) before anything is planned from it
            metrics["num-examples"], noise = count_and_noise(
                ledger, run_id, n, fed, budget, cfg.dp.delta,
                histogram_seed(settings.dp_seed, site.name, server_round, 2), round=server_round)
            public_size = int(metrics["num-examples"])
            q, steps = poisson_schedule(public_size, cfg.batch_size, cfg.epochs)
            delta = float(ledger.delta)  # type: ignore[arg-type]
            reserved = reserved_for_run(fed, ledger, run_id, noise)
            if cfg.dp.noise_multiplier is not None:  # given, not planned: the same limit
                sigma = cfg.dp.noise_multiplier
                if sigma > settings.max_noise:
                    raise PrivacyBudgetExceeded(
                        f"noise multiplier {sigma:g} is above the max noise "
                        f"{settings.max_noise:g}: a model learns next to nothing there")
            else:
                sigma = ledger.plan_noise(q, steps, rounds_left, max_noise=settings.max_noise,
                                          reserved=reserved)
            ledger.check_affordable(sigma, q, steps, reserved)
        except PrivacyBudgetExceeded as err:
            log.warning("site %s declines round %d: %s", site.name, server_round, err)
            return RoundOutcome(None, {**metrics, **privacy_metrics(ledger, budget),
                                       "declined": 1.0}, ledger, str(err))
        dp_seed = (None if cfg.dp.seed is None
                   else site_seed(cfg.dp.seed, site.name, server_round))
        cfg = dataclasses.replace(cfg, dp=DPConfig(noise_multiplier=sigma, delta=delta,
                                                   max_noise=settings.max_noise,
                                                   max_grad_norm=cfg.dp.max_grad_norm,
                                                   seed=dp_seed, accountant=cfg.dp.accountant))
    # the steps of this round (what is accounted under DP); the learning-rate schedule spans the
    # whole run, step by step, as one training call would
    _, steps = poisson_schedule(public_size or n, cfg.batch_size, cfg.epochs)
    total_rounds = server_round - 1 + max(1, rounds_left)
    span = ((server_round - 1) * steps, total_rounds * steps)
    result = train_model(model, site.train, cfg, device,
                         accountant_state=ledger.state if (ledger and cfg.dp) else None,
                         progress=False, proximal_mu=proximal_mu, schedule_span=span,
                         public_size=public_size)
    local["train-loss"] = float(result.epoch_losses[-1])
    if result.accountant_state is not None and ledger is not None:
        ledger.record(result.accountant_state, run=run_id, round=server_round,
                      kind=str(ReleaseKind.MODEL_UPDATE),
                      noise_multiplier=result.noise_multiplier, steps=result.steps)
        metrics.update({**privacy_metrics(ledger, settings.budget),
                        "noise-multiplier": float(result.noise_multiplier or 0.0)})
    return RoundOutcome(global_arrays(model, settings), metrics, ledger, local=local)


def privacy_metrics(ledger: PrivacyLedger, budget: float | None) -> dict[str, float]:
    """What a site reports of its ledger: cumulative epsilon, delta, budget, epsilon per kind."""
    return {"epsilon": ledger.spent(), "delta": float(ledger.delta or 0.0),
            "budget": float(budget or 0.0), **epsilon_by_kind(ledger)}


@dataclass
class Evaluation:
    """A site's calibration release for a global model, and what it keeps to itself."""

    metrics: dict[str, float]  # sent (releases.py)
    local: dict[str, float]  # kept at the site: validation loss, accuracy, own threshold, AUROC
    stat_histograms: np.ndarray | None  # (n_stats, TREE_SIZE), noisy; None: declined (budget)
    # (n, n_stats): per calibration shopper (validation, then training ones when the run
    # calibrates on all), stays at the site
    valid_stats: np.ndarray


@dataclass(frozen=True)
class ReleaseContext:
    """Which run and round a calibration release belongs to, and its noise seed (None: OS)."""

    run_id: str
    server_round: int
    seed: int | None


def _release(site: SiteData, settings: RunConfig, ledger: PrivacyLedger | None,
             ctx: ReleaseContext, kind: ReleaseKind) -> tuple[CalibrationNoise, dict[str, float]]:
    """Account one calibration release of ``kind`` (under DP) and the metrics its reply carries;
    raises PrivacyBudgetExceeded, accounting nothing, when the budget cannot pay for it."""
    dp = settings.train.dp
    if dp is None or ledger is None:
        noise = calibration_noise(settings.federation, None, None)
        return noise, {"num-examples": float(len(site.train)), "declined": 0.0,
                       "calibration-noise": noise.score_std}
    count, noise = count_and_noise(
        ledger, ctx.run_id, len(site.train), settings.federation, settings.budget, dp.delta,
        histogram_seed(settings.dp_seed, site.name, ctx.server_round, 2), round=ctx.server_round)
    ledger.record_gaussian(noise.noise_multiplier, 1, str(kind), run=ctx.run_id,  # type: ignore[arg-type]
                           round=ctx.server_round)
    return noise, {"num-examples": count, "declined": 0.0, "calibration-noise": noise.score_std,
                   **privacy_metrics(ledger, settings.budget)}


def _declined(site: SiteData, ledger: PrivacyLedger | None, settings: RunConfig,
              ctx: ReleaseContext, err: Exception, what: str) -> dict[str, float]:
    log.warning("site %s declines the %s: %s", site.name, what, err)
    out = {"declined": 1.0}
    if ledger is not None:
        out.update(privacy_metrics(ledger, settings.budget))
        count = released_count(ledger, ctx.run_id)
        out["num-examples"] = 1.0 if count is None else count
    return out


def _calibration_stats(model: NextEventModel, site: SiteData, settings: RunConfig,
                       device: torch.device, valid_stats: np.ndarray) -> np.ndarray:
    """The calibration shoppers' statistics ``(n, n_stats)``: the validation shoppers', then,
    when the run calibrates on all shoppers, the training shoppers'."""
    if not settings.calibrates_on_all:
        return valid_stats
    return np.concatenate([valid_stats, score_statistics(model, site.train, device)[1]])


def evaluate_round(site: SiteData, settings: RunConfig, arrays: dict[str, np.ndarray], *,
                   ledger: PrivacyLedger | None, ctx: ReleaseContext) -> Evaluation:
    """Query 1: noisy statistic histograms of the calibration shoppers (validation, and training
    ones when ``settings.calibrates_on_all``) under the global model (accounted under DP);
    next-event loss/accuracy, the site's own threshold and, where labelled, AUROC/AUPRC on the
    validation shoppers are measured too but stay at the site (``Evaluation.local``)."""
    device = resolve_device(settings.train.device)
    model = build_federated_model(settings, arrays, site.valid.source)
    ev, stats = score_statistics(model, site.valid, device)
    local = {"validation-shoppers": float(len(site.valid)), **next_event_metrics(ev)}
    calibrator = ScoreCalibrator().fit(stats)
    valid_scores, _ = calibrator.score(stats)
    local["site-threshold"] = calibrate_threshold(valid_scores, settings.federation.alert_rate)
    if site.test is not None and site.test_labels is not None:
        t_scores, _ = calibrator.score(score_statistics(model, site.test, device)[1])
        local.update({"auroc": auroc(site.test_labels, t_scores),
                      "auprc": auprc(site.test_labels, t_scores),
                      "num-test": float(len(site.test)),
                      "alert-rate-test": float(np.mean(t_scores > local["site-threshold"]))})
    stats = _calibration_stats(model, site, settings, device, stats)
    try:
        noise, metrics = _release(site, settings, ledger, ctx,
                                  ReleaseKind.CALIBRATION_STATISTICS)
    except PrivacyBudgetExceeded as err:
        return Evaluation(_declined(site, ledger, settings, ctx, err, "calibration"), local,
                          None, stats)
    return Evaluation(metrics, local, stat_histograms(stats, noise.stat_std, ctx.seed), stats)


def score_summary(site: SiteData, settings: RunConfig, arrays: dict[str, np.ndarray],
                  calibrator: ScoreCalibrator, *, ledger: PrivacyLedger | None,
                  ctx: ReleaseContext, valid_stats: np.ndarray | None = None
                  ) -> tuple[dict[str, float], np.ndarray | None]:
    """Query 2: noisy histogram of the calibration shoppers' scores under the federated
    calibration (accounted under DP), with the reply's metrics; None when declined.

    ``valid_stats``: the statistics ``evaluate_round`` computed for these same ``arrays``
    (saves scoring the calibration shoppers again)."""
    if valid_stats is None:
        device = resolve_device(settings.train.device)
        model = build_federated_model(settings, arrays, site.valid.source)
        valid_stats = _calibration_stats(model, site, settings, device,
                                         score_statistics(model, site.valid, device)[1])
    scores, _ = calibrator.score(valid_stats)
    try:
        noise, metrics = _release(site, settings, ledger, ctx, ReleaseKind.CALIBRATION_SCORES)
    except PrivacyBudgetExceeded as err:
        return _declined(site, ledger, settings, ctx, err, "score summary"), None
    return metrics, score_histogram(scores, noise.score_std, ctx.seed)
