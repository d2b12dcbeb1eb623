"""Inputs are never outputs: every command refuses an output that is, or lies inside, one of its
inputs (symlinks resolved), an input inside a directory it replaces, and paths that are no
regular file (a FIFO would block forever, a symlink loop is no file), each with one line on
stderr and exit status 2, before anything is read or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "32"]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def seqanom(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the seqanom command in its own process (a hang fails the test after 60 s)."""
    return subprocess.run([sys.executable, "-m", "simulation.cli", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit status 2 with one line on stderr holding every needle; return the line."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> Path:
    """A small event log, an injected copy with labels, and a model trained on the log."""
    d = tmp_path_factory.mktemp("paths")
    assert seqanom("synth", "--shoppers", "30", "--out", d / "ev.csv").returncode == 0
    assert seqanom("inject", "--data", d / "ev.csv", "--out", d / "inj.csv",
                   "--labels", d / "labels.csv", "--rate", "0.3").returncode == 0
    proc = seqanom("train", "--data", d / "ev.csv", "--out", d / "model", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return d


def score(wd: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return seqanom("score", "--model", wd / "model", "--data", wd / "inj.csv", *args)


def test_score_out_onto_labels_is_refused_and_labels_untouched(wd, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes((wd / "labels.csv").read_bytes())
    refused(score(wd, "--out", labels, "--labels", labels), "--labels and --out both name",
            str(labels))
    assert labels.read_bytes() == (wd / "labels.csv").read_bytes()


def test_output_inside_the_model_directory_is_refused(wd):
    config = wd / "model" / "config.json"
    before = config.read_bytes()
    refused(score(wd, "--out", config), "--out", "lies inside --model", str(wd / "model"))
    assert config.read_bytes() == before


def test_output_through_a_symlink_to_an_input_is_refused(wd, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes((wd / "labels.csv").read_bytes())
    link = tmp_path / "scores.csv"
    link.symlink_to(labels)
    refused(score(wd, "--out", link, "--labels", labels), "--labels and --out both name",
            str(labels.resolve()))
    assert labels.read_bytes() == (wd / "labels.csv").read_bytes()


def test_train_refuses_data_inside_the_model_directory_it_replaces(wd, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    data = model / "ev.csv"
    data.write_bytes((wd / "ev.csv").read_bytes())
    refused(seqanom("train", "--data", data, "--out", model, *SMALL),
            "--data", "lies inside", "which --out", "replaces")
    assert data.read_bytes() == (wd / "ev.csv").read_bytes()


def test_simulate_refuses_an_input_under_the_sites_it_replaces(wd, tmp_path):
    run = tmp_path / "run"
    data = run / "sites" / "ev.csv"
    data.parent.mkdir(parents=True)
    data.write_bytes((wd / "ev.csv").read_bytes())
    refused(seqanom("simulate", "--prepare-only", "--data", data, "--format", "seqanom",
                    "--sites", "2", "--out", run),
            f"--data {data} lies inside {run / 'sites'}", "which --out")
    assert data.read_bytes() == (wd / "ev.csv").read_bytes()
    assert not (run / "run-config.toml").exists()


@needs_fifo
@pytest.mark.parametrize("option", ["--out", "--labels", "--data"])
def test_a_fifo_is_refused_not_waited_on(wd, tmp_path, option):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    paths = {"--out": tmp_path / "s.csv", "--labels": wd / "labels.csv",
             "--data": wd / "inj.csv", option: fifo}
    proc = seqanom("score", "--model", wd / "model", *[str(x) for kv in paths.items() for x in kv])
    refused(proc, f"{option} {fifo}: is a FIFO (named pipe), not a regular file")
    assert not (tmp_path / "s.csv").exists()


@needs_fifo
def test_a_fifo_ledger_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "ledger.json"
    os.mkfifo(fifo)
    refused(seqanom("ledger", fifo), f"{fifo}: is a FIFO (named pipe)")


def test_a_symlink_loop_as_data_is_a_one_line_error(wd, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.symlink_to(b)
    b.symlink_to(a)
    refused(seqanom("train", "--data", a, "--out", tmp_path / "model", *SMALL),
            f"--data {a}: is a symlink loop")
    refused(score(wd, "--out", tmp_path / "s.csv", "--labels", a), f"--labels {a}: is a symlink loop")
    assert not (tmp_path / "model").exists() and not (tmp_path / "s.csv").exists()
