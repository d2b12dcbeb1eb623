"""The seqanom command end to end: synth -> inject -> train -> score, and its error handling."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pandas as pd
import pytest

from simulation.cli import main

SMALL = ["--epochs", "2", "--d-model", "32", "--layers", "1", "--max-len", "64"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert main(["-q", "synth", "--shoppers", "150", "--out", str(d / "train.csv.gz"), "--seed", "1"]) == 0
    assert main(["-q", "synth", "--shoppers", "60", "--out", str(d / "test.parquet"), "--seed", "2"]) == 0
    assert main(["-q", "inject", "--data", str(d / "test.parquet"), "--out", str(d / "test_inj.csv"),
                 "--labels", str(d / "labels.csv"), "--rate", "0.5", "--seed", "2"]) == 0
    return d


def test_train_score_with_labels(workdir, capsys):
    d = workdir
    assert main(["-q", "train", "--data", str(d / "train.csv.gz"), "--model", "lstm",
                 "--out", str(d / "model"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "privacy: none" in out and "model written" in out
    assert main(["-q", "score", "--model", str(d / "model"), "--data", str(d / "test_inj.csv"),
                 "--out", str(d / "scores.csv"), "--labels", str(d / "labels.csv"),
                 "--metrics-out", str(d / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out
    scores = pd.read_csv(d / "scores.csv", dtype={"user_id": str})
    labels = pd.read_csv(d / "labels.csv", dtype={"user_id": str})
    # the false alert rate printed and written is the flagged share of the normal shoppers
    normal = scores.merge(labels, on="user_id").query("is_anomalous == 0")
    line = next(x for x in out.splitlines() if "normal shoppers flagged" in x)
    assert f"{int(normal.flagged.sum())} of {len(normal)} " in line and "targets 5.0%" in line
    at = json.loads((d / "m.json").read_text())["at_threshold"]
    assert at["false_alert_rate"] == pytest.approx(normal.flagged.mean())
    assert list(scores.columns[:3]) == ["user_id", "score", "flagged"]
    assert set(scores.user_id) == set(labels.user_id)
    flagged = scores[scores.flagged == 1]
    assert len(flagged) and flagged.top_events.str.len().min() > 0  # every alert is explained


@pytest.mark.parametrize("flag, value", [("--calibration-fraction", "1.5"),
                                         ("--alert-rate", "0")])
def test_bad_training_setting_is_one_line_error(workdir, capsys, flag, value):
    code = main(["-q", "train", "--data", str(workdir / "train.csv.gz"),
                 "--out", str(workdir / "never"), flag, value, *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and value in err and "Traceback" not in err
    assert not (workdir / "never").exists()


def test_train_with_dp_reports_exact_privacy(workdir, capsys):
    d = workdir
    ledger = d / "ledger.json"
    first = ["-q", "train", "--data", str(d / "train.csv.gz"), "--model", "transformer",
             "--out", str(d / "dp_model"), "--dp", "--epsilon", "2", "--delta", "1e-5",
             "--ledger", str(ledger), "--site", "shop-1", *SMALL]
    assert main(first) == 0
    out = capsys.readouterr().out
    assert "-DP for one shopper" in out and "RDP" in out and "calibration: not DP" in out
    eps = float(out.split("privacy: (")[1].split(",")[0])
    assert 0 < eps <= 2
    # a larger budget is refused until it is raised explicitly; then the run continues the
    # ledger: only the remainder is spent
    args = [a if a != "2" else "4" for a in first]
    assert main(args) == 2
    assert "--raise-budget 4" in capsys.readouterr().err
    assert main(["ledger", str(ledger), "--raise-budget", "4"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    eps2 = float(capsys.readouterr().out.split("privacy: (")[1].split(",")[0])
    assert eps < eps2 <= 4
    # the budget (nearly) spent: it refuses, as a site declines, rather than train at noise > 10
    assert main(args) == 2
    assert "noise" in capsys.readouterr().err
    # a budget below what the ledger already holds refuses to train
    lower = [a if a != "4" else "3" for a in args]
    assert main(lower) == 2
    assert "budget exhausted" in capsys.readouterr().err


def test_tokens_format(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    normal = [" ".join(map(str, [1, 2, 3, 4, 5] * int(rng.integers(2, 5)))) for _ in range(60)]
    (tmp_path / "train.txt").write_text("\n".join(normal) + "\n")
    test = normal[:20] + ["1 2 3", "5 4 3 2 1 5 4 3 2 1", "9 9 9 9 9 9"]
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n")
    pd.DataFrame({"user_id": [str(i) for i in range(23)],
                  "is_anomalous": [0] * 20 + [1] * 3}).to_csv(tmp_path / "lab.csv", index=False)
    assert main(["-q", "train", "--data", str(tmp_path / "train.txt"), "--format", "tokens",
                 "--out", str(tmp_path / "m"), "--epochs", "6", "--d-model", "32", "--layers", "1",
                 "--max-len", "32"]) == 0
    assert main(["-q", "score", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "test.txt"),
                 "--format", "tokens", "--out", str(tmp_path / "s.csv"),
                 "--labels", str(tmp_path / "lab.csv")]) == 0
    s = pd.read_csv(tmp_path / "s.csv")
    assert s.score.iloc[20:].min() > s.score.iloc[:20].max()  # all three abnormal lines rank on top


@pytest.mark.parametrize("content, needle", [
    ("", "empty"),
    ("user_id,item_id\n1,2\n", "category_id"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, content, needle):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    code = main(["-q", "train", "--data", str(f), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(f) in err and needle in err.lower() and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_quarantine_is_reported(tmp_path, capsys, workdir):
    src = pd.read_csv(workdir / "test_inj.csv", dtype=str)
    src.loc[3, "timestamp"] = "not-a-time"
    src.loc[5, "behavior"] = "teleport"
    f = tmp_path / "dirty.csv"
    src.to_csv(f, index=False)
    q = tmp_path / "q.csv"
    assert main(["-q", "score", "--model", str(workdir / "model"), "--data", str(f),
                 "--out", str(tmp_path / "s.csv"), "--quarantine", str(q)]) == 0
    out = capsys.readouterr().out
    assert "2 quarantined" in out.replace(",", "") or "quarantined" in out
    rejected = pd.read_csv(q)
    assert len(rejected) == 2 and set(rejected.reason) == {"unparseable timestamp", "unknown behaviour"}
    # as a process (the console's own logging): the summary is printed once, not also logged
    proc = subprocess.run([sys.executable, "-m", "simulation.cli", "score", "--model",
                           str(workdir / "model"), "--data", str(f), "--out", str(tmp_path / "p.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("2 quarantined (1 ") == 1, proc.stdout + proc.stderr


@pytest.mark.integration
def test_console_command_runs_as_a_process(tmp_path):
    missing = tmp_path / "missing.csv"
    proc = subprocess.run([sys.executable, "-m", "simulation.cli", "score", "--model",
                           str(tmp_path), "--data", str(missing), "--out", str(tmp_path / "o.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error" in proc.stderr
    help_ = subprocess.run([sys.executable, "-m", "simulation.cli", "train", "--help"],
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--epsilon" in help_.stdout and "--format" in help_.stdout
    version = subprocess.run([sys.executable, "-m", "simulation.cli", "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0
    assert version.stdout.strip() == f"seqanom {importlib.metadata.version('seqanom')}"


def test_split_keeps_whole_shoppers(workdir, tmp_path):
    assert main(["-q", "split", "--data", str(workdir / "train.csv.gz"), "--train-out",
                 str(tmp_path / "a.parquet"), "--test-out", str(tmp_path / "b.csv"),
                 "--test-fraction", "0.25", "--seed", "3"]) == 0
    src = pd.read_csv(workdir / "train.csv.gz", dtype={"user_id": str})
    a = pd.read_parquet(tmp_path / "a.parquet")
    b = pd.read_csv(tmp_path / "b.csv", dtype={"user_id": str})
    assert len(a) + len(b) == len(src)
    assert not set(a.user_id) & set(b.user_id)
    assert b.user_id.nunique() == round(0.25 * src.user_id.nunique())


def test_console_logging_hides_flower_debug_lines(tmp_path):
    # Flower sets its own logger to DEBUG; the console must still show only what the level allows
    code = (
        "import logging; from simulation.cli import configure_logging\n"
        "configure_logging(False)\n"
        "flwr = logging.getLogger('flwr'); flwr.setLevel(logging.DEBUG)\n"
        "flwr.debug('flower debug line'); logging.getLogger('seqanom').info('hidden info')\n"
        "logging.getLogger('seqanom').warning('shown warning')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "shown warning" in proc.stderr
    assert "flower debug line" not in proc.stderr and "hidden info" not in proc.stderr
