"""The supervised head of semi-supervised mode: labelled shoppers sharpen the unsupervised score.

A site that knows some of its shoppers (confirmed bots, chargebacks: anomalous; reviewed
accounts: normal) passes their labels to ``fit``. Only labelled shoppers teach the head;
unlabelled shoppers are never taken as normal. How the shoppers are used:

* labelled anomalous shoppers are kept out of the next-event model's training (the model
  learns normal behaviour) and out of calibration;
* labelled normal shoppers go to the held-out calibration shoppers first (up to the calibration
  share), so every shopper the head learns from is scored by a model that never trained on it,
  as new shoppers are;
* the head is a ridge-penalised logistic regression on the shopper's unsupervised score and its
  standardised statistics (both compressed by ``sign(x) log(1 + |x|)``), fitted with balanced
  class weights on the labelled shoppers only. Its score is ``a f(score) + w . f(z)``: with
  ``w = 0`` it ranks shoppers exactly as the unsupervised score does, and the penalty on ``w``
  (``HEAD_L2``; the score's own weight ``a`` is penalised 100 times less) pulls it towards that.
  The threshold is then set on the calibration shoppers' head scores: the alert rate stays the
  target.

No DP: the head's training is not private (``train --labels --dp`` is refused).

Measured (bench/README.md, ``supervised_head_bench``, synthetic data, 3 seeds): neutral, not the
issue's +0.02 AUROC: labels for 10% of the training anomalies gave -0.001 (penalty 0.1) and
+0.0005 (1.0, the default) mean test AUROC over unlabelled training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqanom_core.errors import ConfigError
from seqanom_core.scoring import ScoreCalibrator, names_of, stat_names

if TYPE_CHECKING:
    import pandas as pd

    from seqanom_core.config import TrainConfig

log = logging.getLogger(__name__)

HEAD = "head.json"  # the head's file in a model directory
HEAD_L2 = 1.0  # ridge penalty on the statistics' weights (mean weighted log-loss + L2/2 |w|^2)
SCORE_L2_SHARE = 0.01  # the unsupervised score's weight is penalised this share of HEAD_L2
MIN_PER_CLASS = 5  # fewer labelled shoppers of a class than this: fit warns


def compress(x: np.ndarray) -> np.ndarray:
    """``sign(x) log(1 + |x|)``: monotone, so the head with zero statistic weights ranks as the
    score does, and one huge statistic cannot dominate the fit."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1e6, neginf=-1e6)
    return np.sign(x) * np.log1p(np.abs(x))


def features(scores: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The head's inputs ``(n, 1 + n_stats)``: the compressed score, then the compressed
    standardised statistics."""
    return np.column_stack([compress(scores), compress(z)])


@dataclass
class LabelledSplit:
    """Which shoppers of a training set are labelled: indices into the set."""

    anomalous: np.ndarray  # labelled anomalous (kept out of the model's training)
    normal: np.ndarray  # labelled normal
    source: str = "labels"
    train: np.ndarray | None = None  # the shoppers the model trains on (labelled_partition)

    @property
    def n_labelled(self) -> int:
        return len(self.anomalous) + len(self.normal)


def labelled_split(ids: np.ndarray, labels: pd.DataFrame, source: str = "labels") -> LabelledSplit:
    """The labelled shoppers of ``ids`` (shoppers absent from ``labels`` are unlabelled).

    ``ConfigError`` naming ``source`` when a labelled user_id is not among ``ids``, or when
    the labels lack either class (the head needs both anomalous and normal shoppers)."""
    from seqanom_core.labels import check_labels

    table = check_labels(labels, source)
    pos = {u: i for i, u in enumerate(np.asarray(ids).astype(str))}
    missing = [u for u in table["user_id"] if u not in pos]
    if missing:
        raise ConfigError(f"{source}: {len(missing)} of {len(table)} labelled user_ids are not "
                          f"shoppers of the training data, e.g. {missing[:3]}")
    idx = np.array([pos[u] for u in table["user_id"]], dtype=np.int64)
    flag = table["is_anomalous"].to_numpy(np.int64)
    split = LabelledSplit(np.sort(idx[flag == 1]), np.sort(idx[flag == 0]), source)
    if not len(split.anomalous) or not len(split.normal):
        which = "anomalous" if not len(split.anomalous) else "normal"
        raise ConfigError(f"{source}: no shopper of the training data is labelled {which} "
                          f"(is_anomalous {1 if which == 'anomalous' else 0}); the supervised "
                          "head needs labelled anomalous and labelled normal shoppers "
                          "(unlabelled shoppers are not taken as normal)")
    if min(len(split.anomalous), len(split.normal)) < MIN_PER_CLASS:
        log.warning("%s: only %d anomalous and %d normal labelled shoppers: the supervised "
                    "head is fitted on very few", source, len(split.anomalous), len(split.normal))
    return split


def labelled_partition(ids: np.ndarray, labels: pd.DataFrame | str | Path,
                       config: TrainConfig) -> tuple[LabelledSplit, np.ndarray]:
    """(the labelled split with its ``train`` indices, the calibration indices) of the shoppers
    ``ids`` under ``labels`` (a labels CSV path or frame); refused with DP (the head's
    training is not DP)."""
    from seqanom_core.labels import read_labels

    if config.dp is not None:
        raise ConfigError("labels (the supervised head) go without DP: the head's training is "
                          "not differentially private")
    is_path = isinstance(labels, (str, Path))
    frame = read_labels(labels) if is_path else labels
    split = labelled_split(ids, frame, str(labels) if is_path else "labels")
    split.train, calib = partition(len(ids), split, config.calibration_fraction, config.seed)
    return split, calib


def partition(n: int, split: LabelledSplit, fraction: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(training, calibration) indices of ``n`` shoppers: labelled anomalous shoppers in
    neither; labelled normal shoppers in calibration first (a seeded subset if there are more
    than the calibration share), the rest of calibration drawn from the unlabelled."""
    if not 0 < fraction < 1:
        raise ConfigError(f"calibration fraction must be in (0, 1), not {fraction}")
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n), split.anomalous)
    n_calib = max(1, int(round(fraction * len(rest))))
    normal = rng.permutation(split.normal)
    calib = normal[:n_calib]
    others = rng.permutation(np.setdiff1d(rest, calib))
    calib = np.concatenate([calib, others[:n_calib - len(calib)]])
    train = np.setdiff1d(rest, calib)
    if len(train) < 1:
        raise ConfigError(f"{split.source}: no shopper is left to train the model on "
                          f"({len(split.anomalous)} labelled anomalous, {len(calib)} held out)")
    return train, np.sort(calib)


@dataclass
class SupervisedHead:
    """Ridge logistic regression on ``features``; ``decision`` is its score without the bias."""

    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (1 + n_stats,)
    bias: float = 0.0
    l2: float = HEAD_L2
    info: dict[str, Any] = field(default_factory=dict)

    def fit(self, x: np.ndarray, y: np.ndarray, iters: int = 100) -> SupervisedHead:
        """Newton's method on the mean class-balanced log-loss + ridge penalty (the first
        column, the score, penalised ``SCORE_L2_SHARE`` as much; the bias not at all)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if not (y == 1).any() or not (y == 0).any():
            raise ConfigError("the supervised head needs labelled anomalous and normal shoppers")
        n, d = x.shape
        xb = np.column_stack([x, np.ones(n)])
        sw = np.where(y == 1, 0.5 / (y == 1).sum(), 0.5 / (y == 0).sum())  # sums to 1
        pen = np.full(d + 1, self.l2)
        pen[0] *= SCORE_L2_SHARE
        pen[-1] = 0.0
        beta = np.zeros(d + 1)
        beta[0] = 1.0  # start at the unsupervised ranking
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-np.clip(xb @ beta, -50, 50)))
            grad = xb.T @ (sw * (p - y)) + pen * beta
            hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(pen + 1e-9)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        self.weights, self.bias = beta[:-1], float(beta[-1])
        return self

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The head's score ``(n,)`` (its logit less the bias: the threshold is set on it)."""
        return np.asarray(x, dtype=np.float64) @ self.weights

    def to_dict(self) -> dict[str, Any]:
        return {"features": ["score", *names_of(len(self.weights) - 1)], "transform": "sign(x)*log1p(|x|)",
                "weights": self.weights.tolist(), "bias": self.bias, "l2": self.l2,
                "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupervisedHead:
        names = list(data.get("features", []))
        if names not in (["score", *stat_names()], ["score", *stat_names(funnel=True)]):
            raise ValueError("head features do not match this version of seqanom")
        w = np.asarray(data["weights"], dtype=np.float64)
        if w.shape != (len(names),) or not np.isfinite(w).all():
            raise ValueError(f"weights must be {len(names)} finite numbers")
        return cls(w, float(data.get("bias", 0.0)), float(data.get("l2", HEAD_L2)),
                   dict(data.get("info", {})))


def fit_head(calibrator: ScoreCalibrator, calib_stats: np.ndarray, calib_idx: np.ndarray,
             anomalous_stats: np.ndarray, split: LabelledSplit, l2: float = HEAD_L2,
             ) -> SupervisedHead:
    """The head fitted on the labelled anomalous shoppers (statistics ``anomalous_stats``) and
    the labelled normal shoppers among the calibration shoppers (``calib_idx``: their indices
    in the training set, ``calib_stats`` their statistics); ``info`` says what it learnt from."""
    negatives = np.flatnonzero(np.isin(calib_idx, split.normal))  # never unlabelled shoppers
    stats = np.concatenate([anomalous_stats, calib_stats[negatives]])
    y = np.concatenate([np.ones(len(anomalous_stats)), np.zeros(len(negatives))])
    head = SupervisedHead(l2=l2).fit(head_features(calibrator, stats), y)
    head.info = {"n_labelled_anomalous": int((y == 1).sum()),
                 "n_labelled_normal": int((y == 0).sum()),
                 "n_labelled_normal_unused": int(len(split.normal) - len(negatives)),
                 "labels": split.source, "dp": False,
                 "note": "labelled anomalous shoppers kept out of the model's training and "
                         "calibration; labelled normal shoppers held out for calibration; "
                         "unlabelled shoppers never used as normal"}
    log.info("supervised head on %d anomalous and %d normal labelled shoppers: score weight "
             "%.3f, largest statistic weight %.3f", head.info["n_labelled_anomalous"],
             head.info["n_labelled_normal"], head.weights[0], np.abs(head.weights[1:]).max())
    return head


def head_features(calibrator: ScoreCalibrator, stats: np.ndarray) -> np.ndarray:
    """``features`` of shoppers' raw statistics under ``calibrator``."""
    scores, _ = calibrator.score(stats)
    return features(scores, calibrator.standardise(stats))
