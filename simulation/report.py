"""Markdown report, figures and metrics.json of a simulated federation run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqanom_core.labels import align_labels
from seqanom_core.metrics import recall_per_kind
from seqanom_core.privacy import delta_text, epsilon_text
from simulation.baselines import evaluate_scores
from simulation.figures import (
    nested,
    number,
    plot_curves,
    plot_epsilon,
    plot_recall_per_kind,
    plot_rounds,
)

logger = logging.getLogger(__name__)

REPORT, METRICS, FIGURES = "report.md", "metrics.json", "figures"


def plain_json(obj: Any) -> Any:
    """``obj`` with numpy values, tuples and paths made plain JSON (NaN/inf become null)."""
    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, pd.DataFrame):
        return plain_json(obj.to_dict(orient="records"))
    return str(obj)


def _fmt(x: Any, digits: int = 3) -> str:
    """Integers as is, floats to ``digits`` decimals (tiny ones in 3 significant digits), text as
    is; missing or non-finite as an em dash."""
    if x is None or isinstance(x, (bool, np.bool_)):
        return "—" if x is None else str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    v = number(x)
    if v is None:
        return "—" if isinstance(x, (float, np.floating)) else str(x)
    return f"{v:.3g}" if 0 < abs(v) < 10 ** -digits else f"{v:.{digits}f}"


def _epsilon(x: Any) -> str:
    """An epsilon for people (``privacy.epsilon_text``; rounded only here); a per-site dict points
    to the statement."""
    return "per site, see Privacy" if isinstance(x, dict) else epsilon_text(number(x), "—")


def _delta(x: Any) -> str:
    """A delta for people (``privacy.delta_text``)."""
    return "per site, see Privacy" if isinstance(x, dict) else delta_text(number(x), "—")


def _releases_lines(releases: list) -> list[str]:
    """What the sites sent, each kind's protection and epsilon (that kind's releases alone)."""
    rows = [[str(r.get("name")), str(r.get("record")), str(r.get("protection")),
             ("no cost (derived)" if r.get("derived") else _epsilon(r.get("epsilon_of_kind")))
             if r.get("protection") == "accounted" else "—",
             _cell(str(r.get("how", "")), 160)] for r in releases if isinstance(r, dict)]
    return ["Everything the sites sent, and how each is protected (ε: the site's ε of that "
            "kind of release alone, worst site; composed in its ledger they give the ε above, "
            "which is less than their sum):", "",
            *_table(["sent", "in", "protection", "ε of its kind", "how / why public"], rows), ""]


def _cell(text: str, limit: int = 300) -> str:
    """A table cell: one line (a multi-line reason, e.g. a site's traceback, would break the
    table), pipes escaped, long text cut."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)]


def _recall(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: pd.DataFrame, thresholds: dict
) -> tuple[dict[str, dict[str, float]], dict[str, str], dict[str, float | None]]:
    """Recall per kind per method, the rule used (threshold or top-k) per method, and the share
    of normal test shoppers a method's own threshold flags (None for top-k)."""
    recall, rule, false_alert = {}, {}, {}
    for name, (ids, scores) in curves.items():
        y, kinds = align_labels(np.asarray(ids), labels)
        s = np.asarray(scores, dtype=np.float64)
        t = number(thresholds.get(name)) if isinstance(thresholds, dict) else None
        if t is not None:
            flagged = s > t
            rule[name] = f"score > threshold {t:.4g}"
            false_alert[name] = float(flagged[y == 0].mean()) if (y == 0).any() else None
        else:
            k = int(y.sum())
            flagged = np.zeros(s.size, dtype=bool)
            flagged[np.argsort(-s, kind="stable")[:k]] = True
            rule[name] = f"top-k, k = {k} anomalous shoppers"
            false_alert[name] = None
        recall[name] = recall_per_kind(kinds, flagged)
    return recall, rule, false_alert


def _alert_rate(metrics: dict[str, Any]) -> str:
    """The run's target alert rate as a percentage ("the run's" when not recorded)."""
    rate = number(metrics.get("alert_rate"))
    return "the run's target" if rate is None else f"{100 * rate:g}%"


def _privacy_lines(privacy: Any) -> list[str]:
    """The privacy statement as given (no number is computed here; ε and δ in the tables are
    rounded for people)."""
    if not privacy:
        return ["No privacy statement was given for this run: no (ε, δ) is claimed."]
    if not isinstance(privacy, dict):
        return [str(privacy)]
    lines = []
    guarantees = privacy.get("guarantees")
    if isinstance(guarantees, list):
        rows = [[str(g.get("level", "—")), str(g.get("protects", "—")), _epsilon(g.get("epsilon")),
                 _delta(g.get("delta")), str(g.get("accounted_by", "—"))]
                for g in guarantees if isinstance(g, dict)]
        lines += ["Guarantees that held in this run:", ""]
        lines += (_table(["level", "protects", "ε", "δ", "accounted by"], rows) if rows
                  else ["- none: no (ε, δ) is claimed"])
        saw = privacy.get("server_saw_individual_updates")
        if saw is not None:
            lines += ["", "The server " + ("saw each site's model update." if saw else
                                           "saw only the sum of the sites' model updates "
                                           "(secure aggregation).")]
        lines += ["", "Details:", ""]
    if isinstance(privacy.get("releases"), list):
        lines += _releases_lines(privacy["releases"])
    for key, value in privacy.items():
        if key in ("guarantees", "releases", "epsilon_by_kind_per_site"):
            continue
        if isinstance(value, dict):
            lines += [f"- **{key}**:", "", *_table(["", str(key)], [[str(k), str(v)]
                                                                    for k, v in value.items()]), ""]
        else:
            lines.append(f"- **{key}**: {value}")
    return lines


def audit_line(audit: dict[str, Any]) -> str:
    """One sentence on the empirical privacy audit (``seqanom_core.audit``'s record)."""
    can = audit.get("canaries") or {}
    acc = audit.get("epsilon_accounted")
    accounted = ("trained without DP: no ε accounted" if acc is None else
                 f"ε accounted {_epsilon(acc)} (δ {_delta(audit.get('delta'))})")
    return (f"- Membership inference on {can.get('canaries', '?')} canary shoppers "
            f"({can.get('members', '?')} trained on) planted in {audit.get('site', 'a site')}'s "
            f"training data, trained alone with the run's model and DP setting "
            f"({audit.get('epochs', '?')} epochs): AUC {_fmt(audit.get('mia_auc'))}, "
            f"ε lower bound {_fmt(audit.get('epsilon_lower_bound'))} (95% confidence, one-run "
            f"test of Steinke, Nasr & Jagielski 2023); {accounted}.")


def _partition_lines(partition: Any) -> list[str]:
    """Partition summary (list of per-site dicts, or a dict with ``sites``) as Markdown."""
    lines: list[str] = []
    sites = partition
    if isinstance(partition, dict):
        lines += [f"- **{k}**: {v}" for k, v in partition.items() if k != "sites"]
        sites = partition.get("sites", [])
    if isinstance(sites, list) and sites:
        rows = []
        for s in sites:
            s = s if isinstance(s, dict) else {}
            mix = s.get("behavior_mix") or {}
            mix_text = ", ".join(f"{b} {_fmt(100 * v, 1) if number(v) is not None else '—'}%"
                                 for b, v in mix.items()) or "—"
            rows.append([str(s.get("site", "—")), _fmt(s.get("shoppers")),
                         _fmt(s.get("events")), mix_text, _fmt(s.get("category_tv"))])
        lines += ([""] if lines else []) + _table(
            ["site", "shoppers", "events", "behaviour mix", "category TV vs pooled"], rows)
    return lines


def _rounds_lines(rounds: list[dict]) -> list[str]:
    """One table row per round of the server log."""
    rows = []
    for i, r in enumerate(rounds):
        sites = nested(r, "sites") or {}
        declined = [s for s, v in sites.items() if isinstance(v, dict) and v.get("declined")]
        rejected = r.get("rejected") or []
        rej = ", ".join(f"{x.get('site', '?')} ({x.get('reason', '?')})" if isinstance(x, dict)
                        else str(x) for x in rejected)
        rows.append([_fmt(r.get("round", i + 1)),
                     _fmt(nested(r, "site_logs", "train", "train-loss")),
                     _fmt(nested(r, "site_logs", "evaluate", "loss")),
                     _fmt(nested(r, "site_logs", "evaluate", "auroc")),
                     str(len(sites) - len(declined)), ", ".join(declined) or "—",
                     rej or "—", _fmt(r.get("threshold")), _fmt(r.get("seconds"), 1)])
    return _table(["round", "train loss", "eval loss", "eval AUROC", "sites trained",
                   "declined", "rejected updates", "threshold", "seconds"], rows)


def write_report(
    run_dir: Path,
    metrics: dict,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    labels: pd.DataFrame,
    rounds: list[dict],
) -> Path:
    """Write ``report.md``, ``figures/*.png`` and ``metrics.json`` into ``run_dir``; return the report.

    Method AUROC/AUPRC are computed here from ``curves`` and ``labels``; epsilon and delta per
    method come from ``metrics["methods"][name]`` when given. ``metrics.json`` is ``metrics``
    plus an ``evaluation`` key with those computed numbers (unless ``metrics`` has one).
    """
    run_dir = Path(run_dir)
    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    rounds = [r for r in (rounds or []) if isinstance(r, dict)]
    evaluation = {name: evaluate_scores(ids, scores, labels) for name, (ids, scores) in curves.items()}
    thresholds = metrics.get("thresholds") or {}
    recall, rule, false_alert = _recall(curves, labels, thresholds)
    labelled = {name: (align_labels(np.asarray(ids), labels)[0], np.asarray(scores, float))
                for name, (ids, scores) in curves.items()}

    figures: list[tuple[Path | None, str]] = [
        (plot_rounds(rounds, fig_dir / "rounds.png"),
         "Per-round training loss, and evaluation loss and AUROC/AUPRC where the run "
         "calibrated: means over the sites' own logs (read by the simulation; the server "
         "never receives them)."),
        (plot_curves(labelled, fig_dir / "roc.png", "roc"),
         "ROC curves of all methods on the same test shoppers."),
        (plot_curves(labelled, fig_dir / "pr.png", "pr"),
         "Precision-recall curves of all methods on the same test shoppers."),
        (plot_epsilon(rounds, fig_dir / "epsilon.png"),
         "Cumulative ε spent per site after each round, as each site reported it "
         "(x: the site declined to train that round)."),
        (plot_recall_per_kind(recall, fig_dir / "recall_per_kind.png"),
         "Recall per anomaly kind. Flagging rule per method: "
         + "; ".join(f"{n}: {r}" for n, r in rule.items()) + "."),
    ]

    methods_meta = metrics.get("methods") or {}
    summary_rows = []
    for name, ev in evaluation.items():
        given = methods_meta.get(name)
        meta: dict = given if isinstance(given, dict) else {}
        fa = false_alert.get(name)
        low = ev.get("recall_at_fpr") or {}
        summary_rows.append([name, _fmt(ev["auroc"]), _fmt(ev["auprc"]),
                             *(_fmt(low.get(k)) for k in ("0.1%", "0.2%", "1%")),
                             "-" if fa is None else f"{100 * fa:.1f}%",
                             _epsilon(meta.get("epsilon")), _delta(meta.get("delta"))])
    kinds = sorted({k for ev in evaluation.values() for k in ev["auroc_per_kind"]})
    kind_rows = [[name, *(_fmt(ev["auroc_per_kind"].get(k)) for k in kinds)]
                 for name, ev in evaluation.items()]

    lines = [f"# seqanom simulation report: {metrics.get('name', run_dir.name)}", ""]
    if curves:
        n = next(iter(evaluation.values()))
        lines += [f"Test shoppers: {n['n']} ({n['n_anomalous']} with injected anomalies).", "",
                  "## Summary", "",
                  *_table(["method", "AUROC", "AUPRC", "recall @0.1% FPR", "@0.2%", "@1%",
                           "normal flagged", "ε", "δ"], summary_rows),
                  "", "*recall @x% FPR*: the share of anomalous test shoppers scored above all "
                  "but x% of the normal ones (the false alarms a merchant pays for). "
                  "*normal flagged*: the share of normal test shoppers above the method's own "
                  f"threshold (calibrated for an alert rate of {_alert_rate(metrics)}); "
                  "IsolationForest has no threshold.",
                  "", "### AUROC per anomaly kind", "", *_table(["method", *kinds], kind_rows), ""]
    else:
        lines += ["No method scores were given.", ""]
    if metrics.get("stop_reason"):
        lines += [f"**Training stopped early (planned):** {metrics['stop_reason']}. The model is "
                  "that of the last completed round.", ""]
    lines += ["## Privacy", "", *_privacy_lines(metrics.get("privacy")), ""]
    if isinstance(metrics.get("audit"), dict):
        lines += ["## Privacy audit", "", audit_line(metrics["audit"]), ""]
    if (metrics.get("ingest") or {}).get("summary"):
        lines += ["## Data", "", f"- {metrics['ingest']['summary']}", ""]
    if metrics.get("partition"):
        lines += ["## Partition", "", *_partition_lines(metrics["partition"]), ""]
    if rounds:
        lines += ["## Rounds", "", *_rounds_lines(rounds), ""]
    lines += ["## Figures", ""]
    for path, caption in figures:
        if path is not None:
            lines += [f"![{path.stem}]({FIGURES}/{path.name})", "", f"*{caption}*", ""]

    report = run_dir / REPORT
    report.write_text("\n".join(lines))
    out = dict(metrics)
    out.setdefault("evaluation", {name: {**ev, "recall_per_kind": recall[name],
                                         "recall_rule": rule[name],
                                         "false_alert_rate": false_alert[name]}
                                  for name, ev in evaluation.items()})
    (run_dir / METRICS).write_text(json.dumps(plain_json(out), indent=2, allow_nan=False))
    logger.info("wrote %s (%d figures)", report, sum(p is not None for p, _ in figures))
    return report
