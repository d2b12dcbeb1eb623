"""Sequence anomaly detectors in the scikit-learn / PyOD shape.

``fit`` trains a next-event model on normal-looking shoppers (optionally with DP-SGD) and
calibrates scores and an alert threshold on shoppers held out of training;
``decision_function`` returns one score per shopper (higher = more anomalous); ``predict`` applies
the calibrated threshold; ``explain`` names the events that drove a shopper's score with the
event the model expected instead; ``save``/``load`` round-trip a model directory without
unpickling anything (safetensors + JSON). ``fit(..., labels=...)`` adds a supervised head on
labelled shoppers (``seqanom_core.supervised``), which then gives the scores.

Over 400 lines: the whole estimator shape (fit, score, explain, save/load) is one class, as in
scikit-learn and PyOD; the networks, training and scoring it calls live in their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_model, save_model

from seqanom_core import __version__
from seqanom_core.config import DetectorConfig, ModelConfig, Source, TokenizerConfig, TrainConfig
from seqanom_core.errors import ConfigError, ModelFileError, NotFittedError, SeqanomError
from seqanom_core.inference import EventScores
from seqanom_core.ingest.shards import ShardedSequences, split_shards
from seqanom_core.models import (
    NextEventModel,
    arrays_digest,
    backbone_kinds,
    build_model,
    check_model_size,
    check_weights_file,
    get_backbone,
    model_arrays,
    resolve_device,
)
from seqanom_core.models.finetune import apply_finetune, merge_adapters
from seqanom_core.pretraining import transfer_weights
from seqanom_core.privacy import UNIT, AccountantState, accountant_name, noise_source
from seqanom_core.schema import BEHAVIORS
from seqanom_core.scoring import (
    DRIVER_TEXT,
    ScoreCalibrator,
    StatisticName,
    score_statistics,
)
from seqanom_core.sequences import (
    CHANNELS,
    SequenceSet,
    build_sequences,
    decode_event,
    item_state_name,
    split_shoppers,
    vocab_sizes,
)
from seqanom_core.supervised import (
    HEAD,
    SupervisedHead,
    fit_head,
    head_features,
    labelled_partition,
)
from seqanom_core.thresholds import calibrate_threshold
from seqanom_core.training import TrainResult, train_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: What a single-site model directory's calibration is, in the federation's terms (releases.py)
CALIBRATION_NOT_DP = ("not DP: exact quantiles of held-out shoppers of this site (not accounted; "
                      "the model directory is for this site: shared, it shares them unprotected)")
#: Held-out shoppers expected above the threshold (calibration shoppers x alert rate) below which
#: the fit warns: the share of new normal shoppers above an empirical quantile with k shoppers
#: beyond it varies by about 1/sqrt(k + 1) of the target (4 synthetic sites trained alone with
#: DP, 40-44 calibration shoppers each, 5% target: 0.8% to 15.1% of normal test shoppers flagged)
MIN_TAIL_SHOPPERS = 5.0
WEIGHTS, CONFIG, CALIBRATION, METADATA, ACCOUNTANT = (
    "model.safetensors", "config.json", "calibration.json", "metadata.json", "accountant.json")


@dataclass
class ShopperScores:
    """Scores of a set of shoppers, with what is needed to explain them."""

    ids: np.ndarray  # (n,) shopper ids
    scores: np.ndarray  # (n,) higher = more anomalous
    driver: np.ndarray  # (n,) name of the statistic that gave the score
    stats: np.ndarray  # (n, n_stats) raw statistics
    events: EventScores
    sequences: SequenceSet


class SequenceDetector:
    """Next-event sequence anomaly detector; each registered backbone's subclass (``DETECTORS``,
    ``detector_class``) fixes the network kind."""

    kind = ModelConfig.kind  # the default backbone

    def __init__(
        self,
        *,
        model_config: ModelConfig | None = None,
        tokenizer_config: TokenizerConfig | None = None,
        train_config: TrainConfig | None = None,
        progress: bool = True,
    ) -> None:
        self.model_config = model_config or ModelConfig(kind=self.kind)
        self.tokenizer_config = tokenizer_config or TokenizerConfig()
        self.train_config = train_config or TrainConfig()
        self.progress = progress

    # ----------------------------------------------------------------- fitting
    @property
    def config(self) -> DetectorConfig:
        """The full configuration (source is known once fitted)."""
        return DetectorConfig(self.tokenizer_config, self.model_config, self.train_config,
                              getattr(self, "source_", Source.EVENTS))

    def _sequences(self, data: SequenceSet | pa.Table) -> SequenceSet:
        if isinstance(data, (SequenceSet, ShardedSequences)):
            return data
        if isinstance(data, pa.Table):
            return build_sequences(data, self.tokenizer_config)
        raise ConfigError(f"expected an events table or a SequenceSet, not {type(data).__name__}")

    def fit(
        self, data: SequenceSet | pa.Table, *, accountant_state: AccountantState | None = None,
        calibration: SequenceSet | pa.Table | None = None, labels: Any = None,
        init: SequenceDetector | None = None, pool_categories: bool = True,
    ) -> SequenceDetector:
        """Train on (mostly normal) shoppers and calibrate the threshold; returns ``self``.

        ``calibration``: shoppers to calibrate on, all of ``data`` then trains (default: a
        seeded ``calibration_fraction`` of ``data`` is held out for it). ``labels`` (a labels
        CSV path or frame of some shoppers of ``data``): also fit a supervised head
        (``seqanom_core.supervised``), which then scores. ``init``: a pretrained detector to start
        from (``seqanom_core.pretraining``; its model and tokenizer settings must be this one's),
        trained in ``train_config.finetune`` mode; ``pool_categories``: see ``transfer_weights``."""
        finetune = self.train_config.finetune
        if init is None and finetune != "all":
            raise ConfigError(f"finetune {finetune} trains part of a pretrained model: give one "
                              f"to start from (seqanom train --init MODEL_DIR)")
        seqs = self._sequences(data)
        if len(seqs) < 10:
            raise ConfigError(f"need at least 10 shoppers to train, got {len(seqs)}")
        if self.model_config.kind != self.kind:
            raise ConfigError(f"{type(self).__name__} builds '{self.kind}' models, "
                              f"not '{self.model_config.kind}'")
        t0 = time.time()
        self.source_ = seqs.source
        self.head_: SupervisedHead | None = None
        split = None
        if labels is not None:
            if calibration is not None or isinstance(seqs, ShardedSequences):
                raise ConfigError("labels (the supervised head) go with in-memory data and "
                                  "without given calibration shoppers: the labelled normal "
                                  "shoppers are held out for it")
            split, calib_idx = labelled_partition(seqs.ids, labels, self.train_config)
            train_seqs, calib_seqs = seqs.subset(split.train), seqs.subset(calib_idx)
        elif calibration is None and isinstance(seqs, ShardedSequences):  # on-disk shards
            train_seqs, calib_parts = split_shards(seqs, self.train_config.calibration_fraction,
                                                   self.train_config.seed)
        elif calibration is None:
            train_seqs, calib_seqs = split_shoppers(seqs, self.train_config.calibration_fraction,
                                                    self.train_config.seed)
        else:
            train_seqs, calib_seqs = seqs, self._sequences(calibration)
            if calib_seqs.source != seqs.source or len(calib_seqs) == 0:
                raise ConfigError("calibration shoppers must be of the training data's source")
        self.device_ = resolve_device(self.train_config.device)
        torch.manual_seed(self.train_config.seed)  # the initial weights too: same seed, same model
        self.network_ = build_model(self.model_config, vocab_sizes(self.tokenizer_config, seqs.source))
        if init is not None:
            transfer_weights(self.network_, init, self.tokenizer_config,
                             pool_categories=pool_categories)
        trainable = apply_finetune(self.network_, finetune, self.train_config.adapter_rank)
        self.train_result_: TrainResult = train_model(
            self.network_, train_seqs, self.train_config, self.device_,
            accountant_state=accountant_state, progress=self.progress,
        )
        merge_adapters(self.network_)
        if isinstance(train_seqs, SequenceSet):
            calib_parts = [calib_seqs]
        calib_stats = np.concatenate([score_statistics(self.network_, part, self.device_,
                                                       progress=self.progress)[1]
                                      for part in calib_parts])
        n_calib = sum(len(part) for part in calib_parts)
        self.calibrator_ = ScoreCalibrator().fit(calib_stats)
        calib_scores, _ = self.calibrator_.score(calib_stats)
        if not np.isfinite(calib_scores).any():  # the weights blew up: say why, not where
            raise ConfigError(f"training diverged: no held-out shopper has a finite score "
                              f"(final loss {self.train_result_.epoch_losses[-1]:.3g}); lower lr "
                              f"(the learning rate, {self.train_config.lr:g})")
        if split is not None:
            _, anomalous_stats = score_statistics(self.network_, seqs.subset(split.anomalous),
                                                  self.device_, progress=self.progress)
            self.head_ = fit_head(self.calibrator_, calib_stats, calib_idx, anomalous_stats, split)
            calib_scores = self.head_.decision(head_features(self.calibrator_, calib_stats))
        self.threshold_ = calibrate_threshold(calib_scores, self.train_config.alert_rate)
        tail = n_calib * self.train_config.alert_rate
        if tail < MIN_TAIL_SHOPPERS:
            log.warning("threshold set on %d held-out shoppers (about %.1f above it at %.1f%%): "
                        "the alert rate on new shoppers may be far from the target",
                        n_calib, tail, 100 * self.train_config.alert_rate)
        r = self.train_result_
        self.metadata_: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": self.kind,
            "source": seqs.source,
            "n_train_shoppers": len(train_seqs),
            "n_train_events": train_seqs.n_events,
            "n_calibration_shoppers": n_calib,
            # expected held-out shoppers above the threshold; below MIN_TAIL_SHOPPERS it is unsteady
            "calibration_tail_shoppers": tail,
            "epochs": self.train_config.epochs,
            "steps": r.steps,
            "epoch_losses": r.epoch_losses,
            "device": str(self.device_),
            "fit_seconds": round(time.time() - t0, 2),
            "alert_rate": self.train_config.alert_rate,
            "threshold": self.threshold_,
            "privacy": self.privacy_summary(),
        }
        if self.head_ is not None:
            self.metadata_["supervised_head"] = dict(self.head_.info)
        if init is not None:
            self.metadata_["pretrained"] = {
                "created": init.metadata_.get("created"),
                "digest": arrays_digest(model_arrays(init.network_)),
                "finetune": finetune, "trainable_parameters": trainable,
                "categories": "pooled per behaviour" if pool_categories else "kept"}
        return self

    def privacy_summary(self) -> dict[str, Any]:
        """What privacy the saved weights carry, stated exactly (or that there is none)."""
        r = self.train_result_
        if not r.dp:
            return {"dp": False}
        return {
            "dp": True,
            "unit": UNIT,
            "epsilon": r.epsilon,
            "delta": r.delta,
            "accountant": f"{accountant_name(getattr(r.accountant_state, 'accountant', 'rdp'))} "
                          "accountant, Poisson sampling, cumulative over restored history",
            "noise_multiplier": r.noise_multiplier,
            "randomness": noise_source(self.train_config.dp.seed if self.train_config.dp else None),
            "max_grad_norm": self.train_config.dp.max_grad_norm if self.train_config.dp else None,
            "covers": "model weights; calibration statistics and threshold are computed without "
                      "DP on held-out shoppers of the same site and stay with the model directory",
            "calibration": CALIBRATION_NOT_DP,
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")


    # ----------------------------------------------------------------- scoring
    def score_shoppers(self, data: SequenceSet | pa.Table) -> ShopperScores:
        """Scores, drivers and per-event scores of every shopper in ``data``."""
        self._check_fitted()
        seqs = self._sequences(data)
        if seqs.source != self.source_:
            raise ConfigError(f"model was trained on '{self.source_}' input, got '{seqs.source}'")
        ev, stats = score_statistics(self.network_, seqs, self.device_, progress=self.progress,
                                     order_block=self.calibrator_.order_block)
        scores, which = self.calibrator_.score(stats)
        if getattr(self, "head_", None) is not None:
            scores = self.head_.decision(head_features(self.calibrator_, stats))
        names = np.asarray(self.calibrator_.names, dtype=object)
        return ShopperScores(seqs.ids, scores, names[which], stats, ev, seqs)

    def decision_function(self, data: SequenceSet | pa.Table) -> np.ndarray:
        """Anomaly score per shopper ``(n,)``; higher = more anomalous."""
        return self.score_shoppers(data).scores

    def predict(self, data: SequenceSet | pa.Table) -> np.ndarray:
        """0/1 per shopper at the calibrated threshold ``(n,)``."""
        return self.flag(self.decision_function(data))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """0/1 for shopper scores already computed ``(n,)``: 1 above the calibrated threshold."""
        self._check_fitted()
        return (np.asarray(scores) > self.threshold_).astype(np.int64)

    def explain(
        self, scored: ShopperScores, index: int, events: pa.Table | None = None, top_k: int = 3
    ) -> dict[str, Any]:
        """The events that drove shopper ``index``'s score, with what the model expected instead."""
        driver = str(scored.driver[index])
        channel = StatisticName.parse(driver).channel
        ev, seqs = scored.events, scored.sequences
        a, b = int(ev.offsets[index]), int(ev.offsets[index + 1])
        if channel == "end":
            contrib = np.zeros(b - a)
            contrib[-1] = ev.nll["event"][b - 1]
        elif channel == "order":
            contrib = ev.nll["event"][a:b].astype(np.float64)
        elif channel == "total":
            contrib = np.sum([v[a:b] for v in ev.nll.values()], axis=0).astype(np.float64)
        else:
            contrib = ev.nll[channel][a:b].astype(np.float64)
        top = np.argsort(-contrib, kind="stable")[:top_k]
        rows = []
        sl = seqs.span(index)
        n = sl.stop - sl.start
        for p in sorted(int(t) for t in top):
            rec: dict[str, Any] = {
                "position": p,
                "surprise": round(float(contrib[p]), 3),
                "expected": decode_event(int(ev.expected[a + p]), self.tokenizer_config, self.source_),
                "expected_prob": round(float(ev.expected_prob[a + p]), 4),
                "observed_prob": round(float(ev.observed_prob[a + p]), 4),
            }
            if p >= n:
                rec["observed"] = "end of sequence"
            else:
                e = sl.start + p
                rec["observed"] = decode_event(int(seqs.channels["event"][e]), self.tokenizer_config,
                                               self.source_)
                rec["item_state"] = item_state_name(int(seqs.channels["item"][e]),
                                                    self.tokenizer_config, self.source_)
                if events is not None and seqs.rows is not None and self.source_ == Source.EVENTS:
                    row = int(seqs.rows[e])
                    rec["observed"] = (
                        f"{BEHAVIORS[events.column('behavior')[row].as_py()]} "
                        f"item {events.column('item_id')[row].as_py()} "
                        f"category {events.column('category_id')[row].as_py()}"
                    )
                    rec["timestamp"] = float(events.column("timestamp")[row].as_py())
            rows.append(rec)
        return {"driver": driver, "driver_text": DRIVER_TEXT.get(channel, channel), "events": rows}

    @classmethod
    def from_parts(
        cls, config: DetectorConfig, model: NextEventModel, calibrator: ScoreCalibrator,
        threshold: float, metadata: dict[str, Any], *, device: str = "auto", progress: bool = True,
    ) -> SequenceDetector:
        """A fitted detector from a model trained elsewhere (e.g. a federated global model)."""
        det_cls = detector_class(config.model.kind)
        det = det_cls(model_config=config.model, tokenizer_config=config.tokenizer, train_config=config.train,
                      progress=progress)
        det.source_ = Source(config.source)
        det.device_ = resolve_device(device)
        det.network_ = model.to(det.device_).eval()
        det.calibrator_ = calibrator
        det.threshold_ = float(threshold)
        det.metadata_ = {"format_version": FORMAT_VERSION, **metadata, "threshold": float(threshold)}
        priv = metadata.get("privacy", {})
        det.train_result_ = TrainResult(dp=bool(priv.get("dp")), epsilon=priv.get("epsilon"),
                                        delta=priv.get("delta"))
        return det

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write weights (safetensors), config, calibration, metadata (+ accountant state) as files."""
        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        # save_model de-duplicates tensors that share memory (DPLSTM aliases its weights)
        save_model(self.network_, str(out / WEIGHTS))
        cfg = self.config.to_dict()
        cfg["vocab"] = self.network_.vocab
        (out / CONFIG).write_text(json.dumps(cfg, indent=2))
        cal = {"threshold": self.threshold_, "alert_rate": self.train_config.alert_rate,
               **self.calibrator_.to_dict()}
        (out / CALIBRATION).write_text(json.dumps(cal, indent=2))
        # the seqanom version that wrote this directory (metadata_ keeps the one that trained it)
        meta = {**self.metadata_, "written_by": f"seqanom {__version__}"}
        (out / METADATA).write_text(json.dumps(meta, indent=2, default=str))
        if self.train_result_.accountant_state is not None:
            self.train_result_.accountant_state.save(out / ACCOUNTANT)
        if getattr(self, "head_", None) is not None:
            (out / HEAD).write_text(json.dumps(self.head_.to_dict(), indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", progress: bool = True) -> SequenceDetector:
        """Load a model directory written by ``save`` (no pickle: safetensors + JSON only)."""
        d = Path(path)
        if not d.is_dir():
            raise ModelFileError(f"{d}: not a model directory")
        missing = [f for f in (WEIGHTS, CONFIG, CALIBRATION, METADATA) if not (d / f).is_file()]
        if missing:
            raise ModelFileError(f"{d}: missing {', '.join(missing)}")
        cfg_raw, cal, meta = (_read_json_object(d / name) for name in (CONFIG, CALIBRATION, METADATA))
        missing = [k for k in ("vocab", "tokenizer", "model", "train") if k not in cfg_raw]
        if missing:
            raise ModelFileError(f"{d / CONFIG}: missing {', '.join(missing)}")
        vocab = cfg_raw.pop("vocab")
        # event_groups: written since the history copy; older directories have none
        if not (isinstance(vocab, dict) and set(vocab) - {"event_groups"} == set(CHANNELS)
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                        for v in vocab.values())):
            raise ModelFileError(f"{d / CONFIG}: 'vocab' must give a positive size for each of "
                                 f"{', '.join(CHANNELS)} (and optionally event_groups)")
        # config values within their limits (ModelConfig, TokenizerConfig), a vocabulary that is
        # the tokenizer's, a model of at most MAX_PARAMETERS: all before anything is allocated
        try:
            cfg = DetectorConfig.from_dict(cfg_raw)
            wrong = {c: n for c, n in vocab_sizes(cfg.tokenizer, cfg.source).items()
                     if c in vocab and vocab[c] != n}
            if wrong:
                c, n = next(iter(wrong.items()))
                raise ModelFileError(f"'vocab' gives {c} {vocab[c]:,}, but the tokenizer settings "
                                     f"make it {n:,}")
            check_model_size(cfg.model, vocab)
        except SeqanomError as err:
            raise ModelFileError(f"{d / CONFIG}: {err}") from err
        model: NextEventModel = build_model(cfg.model, vocab)
        check_weights_file(d / WEIGHTS, model)  # names and shapes, before any data is read
        try:
            load_model(model, str(d / WEIGHTS), strict=True)
        except Exception as err:  # safetensors' own error types, torch's size-mismatch report
            lines = str(err).strip().splitlines() or [type(err).__name__]
            more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
            raise ModelFileError(f"{d / WEIGHTS}: weights do not fit the configured model or are "
                                 f"damaged: {lines[0].strip()}{more}") from err
        bad = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ModelFileError(f"{d / WEIGHTS}: {len(bad)} weight tensors hold NaN or Inf "
                                 f"(e.g. {bad[0]}); the file is damaged")
        try:
            calibrator = ScoreCalibrator.from_dict(cal)
            threshold = float(cal["threshold"])
        except (ValueError, KeyError, TypeError) as err:
            raise ModelFileError(f"{d / CALIBRATION}: {err!s} "
                                 f"{'is missing' if isinstance(err, KeyError) else ''}".strip()) from err
        if not math.isfinite(threshold):
            raise ModelFileError(f"{d / CALIBRATION}: threshold must be a finite number, not {threshold}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
        det = cls.from_parts(cfg, model, calibrator, threshold, meta, device=device,
                             progress=progress)
        det.metadata_ = meta  # as saved
        if (d / HEAD).is_file():  # a supervised head (train --labels); older directories have none
            try:
                det.head_ = SupervisedHead.from_dict(_read_json_object(d / HEAD))
            except (ValueError, KeyError, TypeError) as err:
                raise ModelFileError(f"{d / HEAD}: {err}") from err
        acc = AccountantState.load(d / ACCOUNTANT) if (d / ACCOUNTANT).is_file() else None
        det.train_result_ = TrainResult(
            epoch_losses=meta.get("epoch_losses", []), steps=meta.get("steps", 0),
            dp=bool(meta.get("privacy", {}).get("dp")), accountant_state=acc,
            epsilon=meta.get("privacy", {}).get("epsilon"), delta=meta.get("privacy", {}).get("delta"),
            noise_multiplier=meta.get("privacy", {}).get("noise_multiplier"),
        )
        return det


def _read_json_object(path: Path) -> dict[str, Any]:
    """A model directory's JSON file, which must hold an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(f"{path}: unreadable: {err}") from err
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


#: the detector class of each registered backbone kind, made by ``detector_class``
DETECTORS: dict[str, type[SequenceDetector]] = {}


def detector_class(kind: str) -> type[SequenceDetector]:
    """The detector class of a registered model kind, named by its backbone (``detector_name``);
    made on first use, then always the same class. ``ConfigError`` for an unknown kind."""
    if kind not in DETECTORS:
        backbone = get_backbone(kind)
        namespace = {"__module__": __name__, "__qualname__": backbone.detector_name,
                     "__doc__": f"{backbone.title} next-event detector.", "kind": kind}
        DETECTORS[kind] = type(backbone.detector_name, (SequenceDetector,), namespace)
    return DETECTORS[kind]


for _kind in backbone_kinds():  # every registered backbone's class, made at import
    detector_class(_kind)
del _kind

# the public names of the built-in backbones' detectors (any kind: make_detector, DETECTORS)
TransformerDetector = DETECTORS["transformer"]
LSTMDetector = DETECTORS["lstm"]


def make_detector(kind: str, **kwargs: Any) -> SequenceDetector:
    """Detector of the given model kind; ``model_config`` defaults to ``ModelConfig(kind=kind)``."""
    if kind not in backbone_kinds():
        raise ConfigError(f"unknown model {kind!r}; choose from {', '.join(backbone_kinds())}")
    kwargs.setdefault("model_config", ModelConfig(kind=kind))
    return detector_class(kind)(**kwargs)


