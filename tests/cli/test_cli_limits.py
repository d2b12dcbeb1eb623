"""Bounded resources and ingest reports through the console command, in subprocesses: a tampered
model directory is refused in one line without allocating, unusual input columns and token
lines are one-line errors naming the file and column, and ``simulate`` reports what it read."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simulation.cli import main

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "32"]
MEMORY_CAP = 8 << 30  # address space of a child: a run-away allocation fails, not the machine


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    assert main(["-q", "synth", "--shoppers", "60", "--out", str(d / "ev.csv"), "--seed", "3"]) == 0
    assert main(["-q", "train", "--data", str(d / "ev.csv"), "--out", str(d / "model"), *SMALL]) == 0
    return d


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    """``seqanom ARGS`` in a subprocess with capped memory: (status, stdout, stderr, peak MiB)."""
    cmd = [sys.executable, "-m", "simulation.cli", "-q", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env,
                                preexec_fn=_cap_memory)
        deadline = time.monotonic() + timeout
        while True:  # os.wait4: the child's own peak memory, not that of every child so far
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"seqanom {' '.join(args[:1])} ran past {timeout} s")
            time.sleep(0.05)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("section, key, value, needle", [
    ("model", "n_layers", 1_000_000, "n_layers must be at most 64, not 1,000,000"),
    ("model", "d_model", 10**7, "d_model must be at most 4,096"),
    ("model", "max_len", 10**9, "max_len must be at most 8,192"),
    ("model", "n_heads", 10**6, "n_heads must be at most 64"),
    ("vocab", "event", -5, "'vocab' must give a positive size"),
    ("vocab", "event", 10**12, "'vocab' gives event 1,000,000,000,000, but the tokenizer"),
    ("tokenizer", "category_buckets", 10**9, "category_buckets must be at most"),
])
def test_tampered_model_config_is_refused_quickly_without_allocating(wd, tmp_path, section, key,
                                                                     value, needle):
    model = tmp_path / "model"
    shutil.copytree(wd / "model", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg[section][key] = value
    (model / "config.json").write_text(json.dumps(cfg))
    t0 = time.monotonic()
    code, _, err, peak_mib = run_cli("score", "--model", str(model), "--data", str(wd / "ev.csv"),
                                     "--out", str(tmp_path / "s.csv"), "--device", "cpu")
    one_line_error(code, err, str(model / "config.json"), needle)
    assert time.monotonic() - t0 < 30 and peak_mib < 1024, (time.monotonic() - t0, peak_mib)
    assert not (tmp_path / "s.csv").exists()


def test_model_too_large_in_all_is_refused_by_its_parameter_count(wd, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(wd / "model", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model"].update(d_model=4096, n_layers=64, n_heads=64, max_len=8192)
    (model / "config.json").write_text(json.dumps(cfg))
    code, _, err, peak_mib = run_cli("score", "--model", str(model), "--data", str(wd / "ev.csv"),
                                     "--out", str(tmp_path / "s.csv"), "--device", "cpu")
    one_line_error(code, err, "config.json", "parameters, more than the limit of 536,870,912")
    assert peak_mib < 1024


def _events(n: int = 40) -> dict[str, pa.Array]:
    return {"user_id": pa.array([str(i % 4) for i in range(n)]),
            "item_id": pa.array([str(i) for i in range(n)]),
            "category_id": pa.array(["c"] * n),
            "behavior": pa.array(["view"] * n),
            "timestamp": pa.array([1.5e9 + 60 * i for i in range(n)])}


@pytest.mark.parametrize("field, column", [
    ("behavior", pa.array([[1, 2]] * 40)),
    ("timestamp", pa.array([{"s": 1}] * 40)),
    ("timestamp", pa.array([[("a", 1)]] * 40, pa.map_(pa.string(), pa.int64()))),
    ("behavior", pa.array([b"\xff"] * 40, pa.binary())),
    ("user_id", pa.DictionaryArray.from_arrays(pa.array([0] * 40, pa.int32()),
                                               pa.array([b"\xfe\xff"], pa.binary()))),
], ids=["list", "struct", "map", "binary", "dictionary"])
def test_parquet_column_of_unusual_type_is_exit_2_naming_the_column(tmp_path, field, column):
    data = tmp_path / "odd.parquet"
    pq.write_table(pa.table({**_events(), field: column}), data)
    code, _, err, _ = run_cli("split", "--data", str(data), "--train-out", str(tmp_path / "a.csv"),
                              "--test-out", str(tmp_path / "b.csv"))
    one_line_error(code, err, f"{data}: field '{field}': column '{field}'")
    assert not (tmp_path / "a.csv").exists()


def test_parquet_nanosecond_times_are_read(tmp_path):
    data = tmp_path / "ns.parquet"
    times = pa.array([1_500_000_000_123_456_789 + 60_000_000_000 * i for i in range(40)],
                     pa.timestamp("ns"))
    pq.write_table(pa.table({**_events(), "timestamp": times}), data)
    code, out, err, _ = run_cli("split", "--data", str(data), "--train-out",
                                str(tmp_path / "a.csv"), "--test-out", str(tmp_path / "b.csv"))
    assert code == 0, err
    assert "ns.parquet: 40 rows read, 40 kept" in out


def test_token_file_of_absurd_lines_is_one_line_error(tmp_path):
    data = tmp_path / "absurd.txt"
    data.write_text(" ".join(["3"] * 100_001) + "\n" + "1 x 2\n" + "5 " + "9" * 40 + "\n")
    code, _, err, _ = run_cli("train", "--format", "tokens", "--data", str(data), "--out",
                              str(tmp_path / "model"), *SMALL)
    one_line_error(code, err, str(data), "no line is a sequence of at most 100,000",
                   "line 1", "more than 100,000 tokens")
    assert not (tmp_path / "model").exists()


def test_an_enormous_token_line_is_quarantined_and_reported(wd, tmp_path):
    data = tmp_path / "tokens.txt"
    lines = [" ".join(str((7 * i + j) % 30) for j in range(12)) for i in range(40)]
    data.write_text("\n".join([*lines[:5], " ".join(["4"] * 100_001), *lines[5:]]) + "\n")
    code, out, err, _ = run_cli("train", "--format", "tokens", "--data", str(data), "--out",
                                str(tmp_path / "model"), *SMALL)
    assert code == 0, err
    assert "tokens.txt: 41 rows read, 40 kept, 1 quarantined (1 more than 100,000 tokens)" in out


def test_simulate_prepare_only_prints_the_ingest_summary(wd, tmp_path):
    code, out, err, _ = run_cli("simulate", "--prepare-only", "--data", str(wd / "ev.csv"),
                                "--format", "seqanom", "--sites", "2", "--out", str(tmp_path / "r"))
    assert code == 0, err
    rows = sum(1 for _ in (wd / "ev.csv").open()) - 1
    assert out.splitlines()[0] == f"ev.csv: {rows:,} rows read, {rows:,} kept"


def test_simulate_prints_the_ingest_summary_before_the_run(wd, tmp_path, monkeypatch, capsys):
    import simulation.run as run

    printed_before: list[str] = []

    def fake_simulate(cfg, loaded=None, placement=None):
        printed_before.append(capsys.readouterr().out)
        assert loaded is not None and loaded[0].num_rows > 0  # read once, by the command
        return {"seconds": 1.0, "evaluation": {}, "privacy": {}}

    monkeypatch.setattr(run, "simulate", fake_simulate)
    assert main(["-q", "simulate", "--data", str(wd / "ev.csv"), "--format", "seqanom",
                 "--out", str(tmp_path / "r")]) == 0
    assert printed_before and printed_before[0].startswith("ev.csv: ")
    assert "rows read" in printed_before[0]
    assert "rows read" not in capsys.readouterr().out  # once, not again after the run
