"""Baselines to compare the federation against: shopper aggregates + IsolationForest, pooled or
single-site sequence detectors, and their evaluation on injected labels."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from seqanom_core.config import SESSION_GAP_S, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.labels import align_labels
from seqanom_core.metrics import auprc, auroc, auroc_per_kind, precision_at_k, recall_at_fpr
from seqanom_core.schema import BEHAVIORS, check_events, encode_values

logger = logging.getLogger(__name__)

#: A gap below this (seconds) counts as machine-fast.
FAST_GAP_S = 2.0

AGGREGATE_NAMES: tuple[str, ...] = (
    "log_events",
    *(f"frac_{b}" for b in BEHAVIORS[1:]),  # the view share is 1 minus these
    "distinct_items_per_event",
    "distinct_categories_per_event",
    "median_log_gap",
    "mean_log_gap",
    "std_log_gap",
    "frac_gaps_under_2s",
    "category_switch_rate",
    "repeat_item_rate",
    "sessions_per_event",
    "events_per_active_day",
)


def _distinct_per_user(user: np.ndarray, value: np.ndarray, n_users: int) -> np.ndarray:
    """Number of distinct values per shopper ``(n_users,)``."""
    span = int(value.max()) + 1 if value.size else 1
    keys = np.unique(user * span + value)
    return np.bincount(keys // span, minlength=n_users).astype(np.float64)


def shopper_aggregates(events: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per shopper (ids sorted): ids ``(n,)``, aggregates ``(n, 14)``, and the feature names."""
    t = check_events(events, "shopper_aggregates")
    user, ids = encode_values(t.column("user_id"), sort=True)
    ids = ids.astype(str)
    item, _ = encode_values(t.column("item_id"), sort=True)
    cat, _ = encode_values(t.column("category_id"), sort=True)
    beh = t.column("behavior").to_numpy().astype(np.int64)
    ts = t.column("timestamp").to_numpy().astype(np.float64)
    order = np.lexsort((np.arange(user.size), ts, user))
    user, item, cat, beh, ts = user[order], item[order], cat[order], beh[order], ts[order]
    n = ids.size
    count = np.bincount(user, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1.0)

    same = np.zeros(user.size, dtype=bool)  # event has a previous event of the same shopper
    same[1:] = user[1:] == user[:-1]
    gap = np.zeros(user.size)
    gap[1:] = ts[1:] - ts[:-1]
    pairs = np.maximum(np.bincount(user[same], minlength=n).astype(np.float64), 1.0)
    log_gap = pd.Series(np.log1p(np.maximum(gap[same], 0.0))).groupby(user[same])
    gap_stats = log_gap.agg(["median", "mean", "std"]).reindex(np.arange(n)).fillna(0.0)

    def pair_rate(flag: np.ndarray) -> np.ndarray:
        return np.bincount(user[same], weights=flag[same].astype(float), minlength=n) / pairs

    prev_cat = np.roll(cat, 1)
    prev_item = np.roll(item, 1)
    new_session = ~same | (gap > SESSION_GAP_S)
    beh_count = np.zeros((n, len(BEHAVIORS)))
    np.add.at(beh_count, (user, beh), 1.0)
    days = _distinct_per_user(user, np.floor((ts - ts.min()) / 86400.0).astype(np.int64)
                              if ts.size else ts.astype(np.int64), n)
    features = np.column_stack([
        np.log(safe),
        beh_count[:, 1:] / safe[:, None],
        _distinct_per_user(user, item, n) / safe,
        _distinct_per_user(user, cat, n) / safe,
        gap_stats["median"].to_numpy(),
        gap_stats["mean"].to_numpy(),
        gap_stats["std"].to_numpy(),
        pair_rate(gap < FAST_GAP_S),
        pair_rate(cat != prev_cat),
        pair_rate(item == prev_item),
        np.bincount(user, weights=new_session.astype(float), minlength=n) / safe,
        count / np.maximum(days, 1.0),
    ])
    return ids, features, list(AGGREGATE_NAMES)


def isolation_forest_scores(
    train_events: pa.Table, test_events: pa.Table, *, seed: int = 0, n_estimators: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """IsolationForest on standardised train aggregates: (test ids, scores, higher = anomalous)."""
    _, x_train, _ = shopper_aggregates(train_events)
    ids, x_test, _ = shopper_aggregates(test_events)
    scaler = StandardScaler().fit(x_train)
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
    forest.fit(scaler.transform(x_train))
    return ids, -forest.score_samples(scaler.transform(x_test))


def detector_scores(
    train_events: pa.Table,
    test_events: pa.Table,
    *,
    model: ModelConfig,
    train: TrainConfig,
    tokenizer: TokenizerConfig | None = None,
    progress: bool = False,
    init: str = "",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit a sequence detector on train events (from the pretrained model ``init``, whose model
    and tokenizer settings it takes, when given): (test ids sorted, scores, privacy/fit info)."""
    pre = None
    if init:
        from seqanom_core.pretraining import load_pretrained

        pre = load_pretrained(init)
        model, tokenizer = pre.model_config, pre.tokenizer_config
    det = make_detector(model.kind, model_config=model, train_config=train, tokenizer_config=tokenizer,
                        progress=progress)
    det.fit(train_events, init=pre)
    scored = det.score_shoppers(test_events)
    order = np.argsort(scored.ids.astype(str), kind="stable")
    r = det.train_result_
    info = {
        "dp": bool(r.dp),
        "epsilon": r.epsilon if r.dp else None,
        "delta": r.delta if r.dp else None,
        "noise_multiplier": r.noise_multiplier if r.dp else None,
        "threshold": float(det.threshold_),
        "epoch_losses": list(r.epoch_losses),
        "fit_seconds": det.metadata_.get("fit_seconds"),
    }
    return scored.ids.astype(str)[order], np.asarray(scored.scores, np.float64)[order], info


def evaluate_scores(ids: np.ndarray, scores: np.ndarray, labels: pd.DataFrame) -> dict[str, Any]:
    """AUROC, AUPRC, precision at k = #anomalous, AUROC per anomaly kind and recall at
    false-positive rates 0.1%, 0.2%, 1% of shopper scores."""
    ids = np.asarray(ids).astype(str)
    scores = np.asarray(scores, dtype=np.float64)
    if ids.shape != scores.shape:
        raise ConfigError(f"{ids.size} ids but {scores.size} scores")
    y, kinds = align_labels(ids, labels)
    n_pos = int(y.sum())
    return {
        "n": int(y.size),
        "n_anomalous": n_pos,
        "auroc": auroc(y, scores),
        "auprc": auprc(y, scores),
        "precision_at_k": precision_at_k(y, scores, n_pos) if n_pos else float("nan"),
        "auroc_per_kind": auroc_per_kind(y, scores, kinds),
        "recall_at_fpr": recall_at_fpr(y, scores),
    }
