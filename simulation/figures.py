"""Figures of a simulation report (matplotlib Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_curve, roc_curve


def nested(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def number(x: Any) -> float | None:
    """``x`` as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _series(rounds: list[dict], *keys: str) -> tuple[list[float], list[float]]:
    """(round numbers, values) where ``rounds[i][keys...]`` is a finite number."""
    xs, ys = [], []
    for i, r in enumerate(rounds):
        y = number(nested(r, *keys))
        if y is not None:
            xs.append(number(r.get("round")) or float(i + 1))
            ys.append(y)
    return xs, ys


def plot_rounds(rounds: list[dict], path: Path) -> Path | None:
    """Per-round train/evaluate loss and evaluate AUROC/AUPRC; None when nothing to plot."""
    loss = {"train loss": _series(rounds, "site_logs", "train", "train-loss"),
            "evaluate loss": _series(rounds, "site_logs", "evaluate", "loss")}
    quality = {"AUROC": _series(rounds, "site_logs", "evaluate", "auroc"),
               "AUPRC": _series(rounds, "site_logs", "evaluate", "auprc")}
    if not any(xs for xs, _ in [*loss.values(), *quality.values()]):
        return None
    fig = Figure(figsize=(9, 3.5))
    for ax, group, ylabel in ((fig.add_subplot(1, 2, 1), loss, "loss"),
                              (fig.add_subplot(1, 2, 2), quality, "score")):
        for name, (xs, ys) in group.items():
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if any(xs for xs, _ in group.values()):
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, kind: str
) -> Path | None:
    """ROC (``kind="roc"``) or precision-recall curves of every method on one plot.

    ``curves`` maps method -> (0/1 labels, scores); methods without both classes are skipped.
    """
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for name, (y, s) in curves.items():
        if not 0 < int(np.sum(y)) < len(y):
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, label=name)
        else:
            p, r, _ = precision_recall_curve(y, s)
            ax.plot(r, p, label=name, drawstyle="steps-post")
        drawn += 1
    if not drawn:
        return None
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_epsilon(rounds: list[dict], path: Path) -> Path | None:
    """Cumulative epsilon per site per round (declined rounds marked x); None without any."""
    sites = sorted({s for r in rounds for s in (nested(r, "sites") or {})})
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for site in sites:
        xs, ys = _series(rounds, "sites", site, "epsilon")
        if not xs:
            continue
        drawn = True
        (line,) = ax.plot(xs, ys, marker="o", label=site)
        declined = [(number(r.get("round")) or float(i + 1), number(nested(r, "sites", site, "epsilon")))
                    for i, r in enumerate(rounds) if nested(r, "sites", site, "declined") is True]
        declined = [(x, y) for x, y in declined if y is not None]
        if declined:
            xs_d, ys_d = zip(*declined, strict=True)
            ax.scatter(xs_d, ys_d, marker="x", s=80, color=line.get_color())
    if not drawn:
        return None
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_recall_per_kind(recall: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Grouped bars: recall per anomaly kind (x) for each method (bars)."""
    kinds = sorted({k for per in recall.values() for k in per})
    if not kinds or not recall:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(kinds) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(recall)
    x = np.arange(len(kinds))
    for j, (name, per) in enumerate(recall.items()):
        ax.bar(x + j * width - 0.4 + width / 2, [per.get(k, np.nan) for k in kinds], width,
               label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(kinds, rotation=30, ha="right")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    return _save(fig, path)
