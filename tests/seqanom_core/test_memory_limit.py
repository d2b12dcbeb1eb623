"""Readers refuse a file whose estimated memory is over the limit per file, in one line naming
it, before reading it; under the limit they read as before."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqanom_core.errors import ConfigError, DataFileError
from seqanom_core.ingest import read_events, read_token_sequences
from seqanom_core.ingest.memory_limit import (
    ENV,
    TEXT_FACTOR,
    max_file_memory,
    parse_size,
)

ROWS = "".join(f"{u},{i},7,pv,{1511544070 + i}\n" for u in range(40) for i in range(50))


@pytest.mark.parametrize("text,expected", [("1000", 1000), ("8G", 8 << 30), ("1.5k", 1536),
                                           ("512MiB", 512 << 20), (" 2 t ", 2 << 40)])
def test_sizes_read_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "1e9", "8X", "nan", "9" * 30])
def test_a_size_that_is_not_one_is_a_clear_error(text):
    with pytest.raises(ConfigError, match=f"{ENV}: .* is not a memory size"):
        parse_size(text)


def test_the_default_is_half_the_machine_and_the_variable_sets_it(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert max_file_memory() > 0
    monkeypatch.setenv(ENV, "3M")
    assert max_file_memory() == 3 << 20


def _files(tmp_path):
    csv = tmp_path / "UserBehavior.csv"
    csv.write_text(ROWS)
    gz = tmp_path / "UserBehavior.csv.gz"
    gz.write_bytes(gzip.compress(ROWS.encode()))
    events, _ = read_events(csv, "taobao")
    parquet = tmp_path / "events.parquet"
    pq.write_table(events, parquet)
    return csv, gz, parquet


def test_every_event_file_over_the_limit_is_refused_naming_it(tmp_path, monkeypatch):
    files = _files(tmp_path)
    for f, fmt in zip(files, ("taobao", "taobao", "seqanom"), strict=True):
        monkeypatch.setenv(ENV, "1M")
        assert read_events(f, fmt)[0].num_rows == 2000
        monkeypatch.setenv(ENV, "20K")  # the text is ~62 KB
        with pytest.raises(DataFileError, match=rf"{f.name}: reading it needs about .* over the "
                                                r"limit of 20\.0 KiB per file"):
            read_events(f, fmt)


def test_a_gzip_file_whose_trailer_understates_it_is_stopped_while_read(tmp_path, monkeypatch):
    # two members: the trailer holds only the last (small) member's size, so the reader counts
    # the text as it decompresses it
    gz = tmp_path / "two.csv.gz"
    gz.write_bytes(gzip.compress(ROWS.encode()) + gzip.compress(b"1,2,3,pv,1511544070\n"))
    monkeypatch.setenv(ENV, "100K")  # ~22 KB of text allowed, the text is ~43 KB
    with pytest.raises(DataFileError, match=r"two.csv.gz: its CSV text is over 22\.2 KiB, which "
                                            r"needs more than the limit of 100\.0 KiB"):
        read_events(gz, "taobao")
    monkeypatch.setenv(ENV, str(int(len(ROWS) * TEXT_FACTOR * 2)))
    assert read_events(gz, "taobao")[0].num_rows == 2001
    tokens = tmp_path / "two.txt.gz"
    tokens.write_bytes(gzip.compress(b"1 2 3\n" * 20000) + gzip.compress(b"4 5\n"))
    monkeypatch.setenv(ENV, "1M")  # ~43 KB of token text allowed, the text is 120 KB
    with pytest.raises(DataFileError, match="two.txt.gz: its token text is over"):
        read_token_sequences(tokens)


def test_a_token_file_over_the_limit_is_refused(tmp_path, monkeypatch):
    tokens = tmp_path / "lines.txt"
    tokens.write_text("1 2 3 4 5\n" * 2000)
    monkeypatch.setenv(ENV, "1M")
    assert len(read_token_sequences(tokens)[0].ids) == 2000
    monkeypatch.setenv(ENV, "100K")
    with pytest.raises(DataFileError, match="lines.txt: reading it needs about .*token text"):
        read_token_sequences(tokens)


def test_a_parquet_file_is_judged_by_its_metadata_before_any_read(tmp_path, monkeypatch):
    # a column of long strings: the rows alone would pass, the stored bytes do not
    table = pa.table({"user_id": [str(u) * 2000 for u in range(30)], "item_id": range(30),
                      "category_id": [1] * 30, "behavior": ["pv"] * 30,
                      "timestamp": [1511544070] * 30})
    path = tmp_path / "long.parquet"
    pq.write_table(table, path, compression="zstd")
    monkeypatch.setenv(ENV, "100K")
    with pytest.raises(DataFileError, match="long.parquet: reading it needs about"):
        read_events(path, "seqanom")


@pytest.mark.integration
def test_the_option_and_the_variable_are_one_line_errors(tmp_path):
    csv = _files(tmp_path)[0]
    base = [sys.executable, "-m", "simulation.cli"]
    cmd = ["inject", "--data", str(csv), "--format", "taobao", "--out", str(tmp_path / "o.csv"),
           "--labels", str(tmp_path / "l.csv")]
    bad = subprocess.run([*base, "--max-file-memory", "lots", *cmd], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--max-file-memory: 'lots' is not a memory size" in bad.stderr
    small = subprocess.run([*base, "--max-file-memory", "10K", *cmd], capture_output=True,
                           text=True, timeout=120)
    assert small.returncode == 2, small.stderr
    assert small.stderr.strip().endswith("--max-file-memory or SEQANOM_MAX_FILE_MEMORY")
    assert len(small.stderr.strip().splitlines()) == 1 and csv.name in small.stderr
    env = subprocess.run([*base, *cmd], capture_output=True, text=True, timeout=120,
                         env={**os.environ, ENV: "huge"})
    assert env.returncode == 2 and f"{ENV}: 'huge' is not a memory size" in env.stderr
