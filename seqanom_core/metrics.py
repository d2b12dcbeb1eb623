"""Detection metrics on labelled scores (labels: 1 = anomalous).

scikit-learn is imported inside the functions: a site without labels never pays for it (every
federated message starts a fresh ClientApp process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seqanom_core.errors import ConfigError


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ConfigError(f"{len(y)} labels but {len(s)} scores")
    if not np.isfinite(s).all():
        raise ConfigError("scores contain NaN or infinite values")
    return y, s


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(labels, scores)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve); NaN without positives."""
    from sklearn.metrics import average_precision_score

    y, s = _check(labels, scores)
    return float(average_precision_score(y, s)) if 0 < y.sum() else float("nan")


#: The false-positive rates recall is reported at (DeepLog's operating point is 0.2%)
LOW_FPRS: tuple[float, ...] = (0.001, 0.002, 0.01)


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray,
                  fprs: Sequence[float] = LOW_FPRS) -> dict[str, float]:
    """Recall of the anomalous rows at each false-positive rate of ``fprs``, keyed "0.1%" etc.

    At rate f the threshold is the (m+1)-th highest normal score, m = floor(f x normals): rows
    strictly above it are flagged, so at most m normal rows are (with 300 normals and f 0.1%,
    m = 0: recall of the anomalies above every normal). NaN without both classes."""
    y, s = _check(labels, scores)
    normal = np.sort(s[y == 0])[::-1]
    anomalous = s[y == 1]
    out = {}
    for f in fprs:
        key = f"{100 * f:g}%"
        if not len(normal) or not len(anomalous):
            out[key] = float("nan")
            continue
        threshold = normal[min(int(np.floor(f * len(normal))), len(normal) - 1)]
        out[key] = float((anomalous > threshold).mean())
    return out


def precision_recall_f1(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of 0/1 flags, the alert rate over all rows and the false alert
    rate (the fraction of normal rows flagged: what a threshold's target alert rate is for)."""
    y = np.asarray(labels).astype(bool)
    f = np.asarray(flagged).astype(bool)
    tp = float(np.sum(y & f))
    precision = tp / f.sum() if f.sum() else 0.0
    recall = tp / y.sum() if y.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    normal = ~y
    false_alerts = float(np.sum(f & normal))
    return {"precision": precision, "recall": recall, "f1": f1, "alert_rate": float(f.mean()),
            "false_alerts": false_alerts,
            "false_alert_rate": false_alerts / normal.sum() if normal.sum() else float("nan")}


def best_f1(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 at the threshold that maximises F1 (an oracle upper bound)."""
    from sklearn.metrics import precision_recall_curve

    y, s = _check(labels, scores)
    if not y.sum():
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": float("nan")}
    p, r, t = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)[:-1]
    k = int(np.argmax(f1))
    return {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f1[k]),
            "threshold": float(t[k])}


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of anomalies among the ``k`` highest scores."""
    y, s = _check(labels, scores)
    if k <= 0:
        raise ConfigError(f"k must be positive, not {k}")
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean()) if len(top) else float("nan")


def recall_per_kind(kinds: Sequence[str] | np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Recall of the flags within each anomaly kind (normal rows have kind "")."""
    kinds_arr = np.asarray(kinds, dtype=object)
    f = np.asarray(flagged).astype(bool)
    return {str(k): float(f[kinds_arr == k].mean()) for k in sorted(set(kinds_arr) - {""})}


def auroc_per_kind(labels: np.ndarray, scores: np.ndarray, kinds: Sequence[str] | np.ndarray) -> dict[str, float]:
    """AUROC of each anomaly kind against all normal rows."""
    y, s = _check(labels, scores)
    kinds_arr = np.asarray(kinds, dtype=object)
    normal = y == 0
    out = {}
    for k in sorted(set(kinds_arr[y == 1]) - {""}):
        m = normal | (kinds_arr == k)
        out[str(k)] = auroc(y[m], s[m])
    return out


def detection_report(
    labels: np.ndarray, scores: np.ndarray, threshold: float, kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics at once: AUROC, AUPRC, P/R/F1 at the threshold and at the best F1, P@k,
    recall at false-positive rates 0.1%, 0.2% and 1%."""
    y, s = _check(labels, scores)
    flagged = s > threshold
    n_pos = int(y.sum())
    report: dict[str, Any] = {
        "n": int(len(y)), "n_anomalous": n_pos,
        "auroc": auroc(y, s), "auprc": auprc(y, s),
        "at_threshold": {"threshold": float(threshold), **precision_recall_f1(y, flagged)},
        "best_f1": best_f1(y, s),
        "precision_at_k": {"k": n_pos, "value": precision_at_k(y, s, n_pos)} if n_pos else None,
        "recall_at_fpr": recall_at_fpr(y, s),
    }
    if kinds is not None:
        report["recall_per_kind"] = recall_per_kind(kinds, flagged)
        report["auroc_per_kind"] = auroc_per_kind(y, s, kinds)
    return report
