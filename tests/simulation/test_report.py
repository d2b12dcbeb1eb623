"""Tests of the simulation report writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulation.report import plain_json, write_report

KINDS = ["crawler", "click_farm", "shuffle"]


@pytest.fixture()
def scored() -> tuple[dict, pd.DataFrame]:
    """Three methods' scores on 60 shoppers, 15 anomalous of three kinds."""
    rng = np.random.default_rng(0)
    ids = np.array([f"u{i:03d}" for i in range(60)])
    y = np.zeros(60, dtype=int)
    y[:15] = 1
    labels = pd.DataFrame({"user_id": ids, "is_anomalous": y,
                           "kind": [KINDS[i % 3] if i < 15 else "" for i in range(60)]})
    curves = {
        "federated": (ids, y * 1.5 + rng.normal(size=60)),
        "centralised": (ids[::-1], (y * 3.0 + rng.normal(size=60))[::-1]),
        "isolation-forest": (ids, rng.normal(size=60)),
    }
    return curves, labels


def _rounds() -> list[dict]:
    return [
        {"round": 1, "site_logs": {"train": {"train-loss": 3.1},
                                   "evaluate": {"loss": 2.9, "accuracy": 0.31, "auroc": 0.7,
                                                "auprc": 0.5}},
         "sites": {"site-0": {"epsilon": 1.2, "declined": False, "train_loss": 3.0},
                   "site-1": {"epsilon": 0.9, "declined": False}},
         "rejected": [{"site": "site-2", "reason": "NaN"},
                      {"site": "site-3", "reason": "Traceback:\n  File x | y\nValueError"}],
         "seconds": 12.5},
        {"round": 2, "site_logs": {"train": {"train-loss": 2.5}, "evaluate": {"loss": 2.4}},
         "sites": {"site-0": {"epsilon": 1.2, "declined": True},
                   "site-1": {"epsilon": 1.4, "declined": False}},
         "seconds": np.float64(11.0)},
    ]


def test_report_and_figures(tmp_path: Path, scored: tuple) -> None:
    curves, labels = scored
    privacy = {"unit": "one shopper at one site", "epsilon": {"site-0": 1.2, "site-1": 1.4},
               "delta": 1e-5, "accountant": "RDP", "rounds": 2}
    metrics = {
        "privacy": privacy,
        "thresholds": {"federated": np.float32(0.5)},
        "methods": {"federated": {"epsilon": 1.4, "delta": 1e-5}},
        "partition": [{"site": "site-0", "shoppers": 30, "events": 900,
                       "behavior_mix": {"view": 0.9, "cart": 0.1}, "category_tv": 0.2}],
        "array": np.arange(3),
    }
    report = write_report(tmp_path / "run", metrics, curves, labels, _rounds())
    assert report == tmp_path / "run" / "report.md"
    text = report.read_text()
    figs = {p.name for p in (tmp_path / "run" / "figures").glob("*.png")}
    assert figs == {"rounds.png", "roc.png", "pr.png", "epsilon.png", "recall_per_kind.png"}
    for name in figs:
        assert f"figures/{name}" in text
        assert (tmp_path / "run" / "figures" / name).stat().st_size > 1000
    for method in curves:
        assert f"| {method} |" in text
    assert "one shopper at one site" in text and "RDP" in text and "1e-05" in text
    assert "| site-1 | 1.4 |" in text  # epsilon per site as given in the statement's details
    assert "| federated | " in text and "| 1.400 | 1.0e-05 |" in text  # rounded for people
    assert "site-2 (NaN)" in text
    assert "site-3 (Traceback: File x \\| y ValueError)" in text  # one table row, pipe escaped
    assert "| 1 | 3.100 | 2.900 | 0.700 |" in text  # the sites' own logs, as the simulation reads them
    assert "score > threshold 0.5" in text and "top-k, k = 15" in text
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert data["array"] == [0, 1, 2]
    assert data["privacy"]["epsilon"] == {"site-0": 1.2, "site-1": 1.4}
    assert data["evaluation"]["centralised"]["auroc"] > data["evaluation"]["isolation-forest"]["auroc"]
    assert set(data["evaluation"]["federated"]["recall_per_kind"]) == set(KINDS)
    # the share of normal shoppers above the method's own threshold; none without a threshold
    ids, s = curves["federated"]
    normal = labels.set_index("user_id").loc[ids, "is_anomalous"].to_numpy() == 0
    expected = float(np.mean(s[normal] > 0.5))
    assert data["evaluation"]["federated"]["false_alert_rate"] == pytest.approx(expected)
    assert data["evaluation"]["isolation-forest"]["false_alert_rate"] is None
    assert f"| {100 * expected:.1f}% |" in text and "alert rate of the run's target" in text


def test_robust_to_missing_keys(tmp_path: Path, scored: tuple) -> None:
    curves, labels = scored
    rounds = [{"round": 1}, {"evaluate": {"accuracy": 0.2}}, {"sites": {"a": {}}}, "junk"]
    report = write_report(tmp_path, {"note": float("nan")}, curves, labels, rounds)
    text = report.read_text()
    assert "No privacy statement" in text
    assert "## Partition" not in text
    figs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert figs == {"roc.png", "pr.png", "recall_per_kind.png"}
    assert json.loads((tmp_path / "metrics.json").read_text())["note"] is None


def test_no_curves_no_rounds(tmp_path: Path) -> None:
    labels = pd.DataFrame({"user_id": [], "is_anomalous": [], "kind": []})
    report = write_report(tmp_path, {}, {}, labels, [])
    assert "No method scores" in report.read_text()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"evaluation": {}}


def test_plain_json() -> None:
    out = plain_json({"a": np.float32(1.5), "b": (np.int64(2), np.inf), 3: np.bool_(True),
                      "p": Path("x")})
    assert out == {"a": 1.5, "b": [2, None], "3": True, "p": "x"}
    json.dumps(out, allow_nan=False)


def test_report_states_each_guarantee_and_a_planned_stop(tmp_path: Path, scored: tuple) -> None:
    curves, labels = scored
    privacy = {"mode": "local+central", "server_saw_individual_updates": False, "guarantees": [
        {"level": "shopper", "protects": "one shopper at a site", "epsilon": 3.25,
         "delta": 1e-5, "accounted_by": "Opacus RDP accountant per site"},
        {"level": "site", "protects": "one site", "epsilon": 7.077, "delta": 1e-5,
         "accounted_by": "Flower's RDP accountant"}]}
    write_report(tmp_path, {"privacy": privacy, "stop_reason": "central privacy budget"},
                 curves, labels, _rounds())
    text = (tmp_path / "report.md").read_text()
    assert "| shopper | one shopper at a site | 3.250 | 1.0e-05 | Opacus RDP accountant per site |" \
        in text
    assert "| site | one site | 7.077 | 1.0e-05 | Flower's RDP accountant |" in text
    assert "saw only the sum" in text and "stopped early (planned):** central privacy budget" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["privacy"]["guarantees"][1][
        "epsilon"] == 7.077


def test_report_states_the_privacy_audit(tmp_path: Path, scored: tuple) -> None:
    curves, labels = scored
    audit = {"site": "site-0", "mia_auc": 0.5312, "epsilon_lower_bound": 0.0,
             "epsilon_accounted": 7.9981, "delta": 1e-5, "epochs": 20,
             "canaries": {"canaries": 64, "canary_length": 32, "seed": 0, "members": 30}}
    write_report(tmp_path, {"audit": audit}, curves, labels, [])
    text = (tmp_path / "report.md").read_text()
    line = next(x for x in text.splitlines() if "Membership inference" in x)
    assert "64 canary shoppers (30 trained on)" in line and "site-0" in line
    assert "AUC 0.531" in line and "ε lower bound 0.000" in line and "ε accounted 7.998" in line
    assert json.loads((tmp_path / "metrics.json").read_text())["audit"]["mia_auc"] == 0.5312
    write_report(tmp_path, {}, curves, labels, [])  # no audit: no section
    assert "Privacy audit" not in (tmp_path / "report.md").read_text()
