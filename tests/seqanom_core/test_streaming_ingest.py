"""Streaming ingest (record batches -> shopper partitions -> tokenised shards) against the
in-memory path: same sequences and tokens, same rejected-row counts and quarantine lines."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqanom_core.config import TokenizerConfig
from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.ingest import read_events
from seqanom_core.ingest.shards import ShardedSequences, ShardWindows, load_shards, read_manifest
from seqanom_core.ingest.streaming import partition_events, stream_ingest, string_hash
from seqanom_core.sequences import CHANNELS, build_sequences

TOK = TokenizerConfig()
BEHAVIORS = ["pv", "cart", "fav", "buy"]


def _taobao_lines(n: int, seed: int = 0, users: int = 40) -> list[str]:
    """n shuffled (not grouped by shopper) Taobao rows: user,item,category,behavior,timestamp."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    item = rng.integers(0, 30, n)
    return [f"{u[i]},{item[i]},{item[i] % 7},{BEHAVIORS[rng.integers(0, 4)]},"
            f"{1511544070 + int(rng.integers(0, 86400 * 3))}" for i in range(n)]


def _bad_file(tmp_path, n: int = 3000):
    lines = _taobao_lines(n)
    lines[5] = ",1,1,pv,1511544070"  # null user
    lines[100] = "7,1,1,pv,yesterday"  # unparseable timestamp
    lines[200] = "7,1,1,jump,1511544070"  # unknown behaviour
    lines[300] = "7,1,1,pv"  # ragged
    lines[2500] = "8,1,1,pv,99"  # out of range
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _shard_map(directory):
    """shopper id -> {channel: tokens} of every shard."""
    out = {}
    for seqs in load_shards(directory):
        for j, sid in enumerate(seqs.ids):
            sl = seqs.span(j)
            out[str(sid)] = {c: np.asarray(seqs.channels[c][sl]) for c in CHANNELS}
    return out


def _assert_same_sequences(directory, events):
    seqs = build_sequences(events, TOK)
    got = _shard_map(directory)
    assert sorted(got) == sorted(str(s) for s in seqs.ids)
    for i, sid in enumerate(seqs.ids):
        for c in CHANNELS:
            np.testing.assert_array_equal(got[str(sid)][c], seqs.channels[c][seqs.span(i)])


@pytest.mark.parametrize("batch_bytes", [1024, 1 << 20])
def test_streaming_equals_in_memory(tmp_path, batch_bytes):
    path = _bad_file(tmp_path)
    manifest, report = stream_ingest(path, "taobao", tmp_path / "tok", TOK, n_shards=5,
                                     batch_bytes=batch_bytes, quarantine_path=tmp_path / "q1.csv",
                                     progress=False)
    events, ref = read_events(path, "taobao", quarantine_path=tmp_path / "q2.csv")
    assert (report.rows_read, report.rows_kept, report.rejected) == \
        (ref.rows_read, ref.rows_kept, ref.rejected)
    assert sum(report.rejected.values()) == 5
    # same rows and values (quoting is chosen per batch, so it may differ)
    assert list(csv.reader(open(tmp_path / "q1.csv"))) == list(csv.reader(open(tmp_path / "q2.csv")))
    _assert_same_sequences(tmp_path / "tok", events)
    assert manifest["events"] == events.num_rows and len(manifest["shards"]) <= 5
    assert not (tmp_path / "tok" / "partitions").exists()
    assert read_manifest(tmp_path / "tok")["report"]["rows_kept"] == ref.rows_kept


def test_quarantine_names_file_lines(tmp_path):
    path = _bad_file(tmp_path)
    stream_ingest(path, "taobao", tmp_path / "tok", TOK, n_shards=3, batch_bytes=2048,
                  quarantine_path=tmp_path / "q.csv", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "q.csv")))
    assert [int(r["line"]) for r in rows] == [6, 101, 201, 301, 2501]
    assert rows[3]["reason"] == "ragged row" and rows[3]["raw"] == "7,1,1,pv"


def test_header_csv_and_parquet(tmp_path):
    events, _ = read_events(_bad_file(tmp_path), "taobao")
    canon = tmp_path / "events.parquet"
    pq.write_table(events.set_column(events.schema.get_field_index("behavior"), "behavior",
                                     pa.array([BEHAVIORS[b] for b in events.column("behavior")
                                               .to_pylist()])), canon, row_group_size=500)
    ref, _ = read_events(canon, "seqanom")
    manifest, report = stream_ingest(canon, "seqanom", tmp_path / "tok", TOK, n_shards=4,
                                     batch_bytes=40 * 700, progress=False)
    assert report.rows_kept == ref.num_rows == manifest["events"]
    _assert_same_sequences(tmp_path / "tok", ref)


def test_refused_batch_is_quarantined_not_the_file(tmp_path):
    good = _taobao_lines(200)
    bad = [f"{i},1,1,pv,never" for i in range(300)]
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(good + bad) + "\n")
    _, report = stream_ingest(path, "taobao", tmp_path / "tok", TOK, n_shards=2,
                              batch_bytes=1024, progress=False)
    assert report.rows_kept == 200 and sum(report.rejected.values()) == 300
    assert any(k.startswith("record batch refused") or k == "unparseable timestamp"
               for k in report.rejected)
    only_bad = tmp_path / "bad.csv"
    only_bad.write_text("\n".join(bad) + "\n")
    with pytest.raises(SchemaError, match="bad.csv"):
        stream_ingest(only_bad, "taobao", tmp_path / "tok2", TOK, batch_bytes=1024,
                      progress=False)


def test_bounded_memory_estimate(tmp_path, monkeypatch):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(_taobao_lines(20000)) + "\n")
    size = path.stat().st_size
    monkeypatch.setenv("SEQANOM_MAX_FILE_MEMORY", str(size * 2))
    with pytest.raises(DataFileError, match="over the limit"):
        read_events(path, "taobao")
    parts, report = partition_events(path, "taobao", tmp_path / "work", n_shards=64,
                                     batch_bytes=4096, progress=False)
    assert report.rows_kept == 20000 and 1 < len(parts) <= 64
    with pytest.raises(DataFileError, match="streamed in batches"):  # batches too big for it
        partition_events(path, "taobao", tmp_path / "work2", batch_bytes=size, progress=False)


def test_partition_by_shopper_and_hash():
    h = string_hash(pa.array(["a", "b", "a", "", "long shopper id " * 3, None]))
    assert h[0] == h[2] and h[0] != h[1] and h.dtype == np.uint64
    assert len(set(string_hash(pa.array([str(i) for i in range(1000)])) % np.uint64(8))) == 8


def test_bad_options_and_existing_output(tmp_path):
    path = _bad_file(tmp_path)
    with pytest.raises(ConfigError, match="shards"):
        stream_ingest(path, "taobao", tmp_path / "t", TOK, n_shards=0, progress=False)
    with pytest.raises(ConfigError, match="batch size"):
        stream_ingest(path, "taobao", tmp_path / "t2", TOK, batch_bytes=10, progress=False)
    stream_ingest(path, "taobao", tmp_path / "t3", TOK, n_shards=2, progress=False)
    with pytest.raises(ConfigError, match="already holds"):
        stream_ingest(path, "taobao", tmp_path / "t3", TOK, n_shards=2, progress=False)


def test_train_reads_shards(tmp_path):
    import torch

    from seqanom_core.config import ModelConfig, TrainConfig
    from seqanom_core.models import NextEventModel
    from seqanom_core.sequences import vocab_sizes
    from seqanom_core.training import train_model

    stream_ingest(_bad_file(tmp_path), "taobao", tmp_path / "tok", TOK, n_shards=3,
                  progress=False)
    data = ShardedSequences.open(tmp_path / "tok")
    assert len(data) == 40 and data.n_events == 2995
    windows = ShardWindows(data.shards, 16, 0)
    assert windows[len(windows) - 1].shape == (6, 16)
    model = NextEventModel(ModelConfig(max_len=16), vocab_sizes(TOK, "events"))
    result = train_model(model, data, TrainConfig(epochs=1, batch_size=8), torch.device("cpu"),
                         progress=False)
    assert result is not None


def test_cli_tokenize(tmp_path, capsys):
    from simulation.cli.main import main

    path = _bad_file(tmp_path)
    assert main(["-q", "tokenize", "--data", str(path), "--format", "taobao", "--out",
                 str(tmp_path / "tok"), "--shards", "3", "--batch-size", "8K",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "2,995 kept" in out and "3 shards" in out
    with pytest.raises(SystemExit) as exc:
        main(["tokenize", "--data", str(path), "--out", str(tmp_path / "x"), "--shards", "0"])
    assert exc.value.code == 2
    _assert_same_sequences(tmp_path / "tok", read_events(path, "taobao")[0])


@pytest.mark.parametrize("frac", [False, True])
def test_shopper_time_order_is_lexsort(frac):
    from seqanom_core.sequences import _shopper_time_order

    rng = np.random.default_rng(1)
    users = rng.integers(0, 50, 5000).astype(np.int64)
    ts = 1.5e9 + rng.integers(0, 100, 5000).astype(np.float64)  # many ties
    if frac:
        ts[::7] += 0.5
    np.testing.assert_array_equal(_shopper_time_order(users, 50, ts), np.lexsort((ts, users)))


def test_gzip_csv(tmp_path):
    import gzip

    path = _bad_file(tmp_path)
    gz = tmp_path / "UserBehavior.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    _, report = stream_ingest(gz, "taobao", tmp_path / "tok", TOK, n_shards=2, batch_bytes=4096,
                              progress=False)
    events, ref = read_events(path, "taobao")
    assert (report.rows_read, report.rejected) == (ref.rows_read, ref.rejected)
    _assert_same_sequences(tmp_path / "tok", events)


def test_cli_train_on_shards_holds_whole_shards_out_and_scores(tmp_path, capsys):
    """``train --shards``: trained from the memory-mapped shards, the threshold set on whole
    held-out shards; every shopper is in one part or the other; the model scores events."""
    from seqanom_core.detector import SequenceDetector
    from simulation.cli.main import main

    path = tmp_path / "ev.csv"
    path.write_text("\n".join(_taobao_lines(4000, users=60)) + "\n")
    assert main(["-q", "tokenize", "--data", str(path), "--format", "taobao", "--out",
                 str(tmp_path / "tok"), "--shards", "4"]) == 0
    capsys.readouterr()
    assert main(["-q", "train", "--shards", str(tmp_path / "tok"), "--out", str(tmp_path / "m"),
                 "--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "16"]) == 0
    assert "4 shards" in capsys.readouterr().out
    det = SequenceDetector.load(tmp_path / "m", progress=False)
    meta = det.metadata_
    shoppers = len({line.split(",")[0] for line in path.read_text().splitlines()})
    assert meta["n_train_shoppers"] + meta["n_calibration_shoppers"] == shoppers
    assert 0 < meta["n_calibration_shoppers"] < shoppers
    scores = det.score_shoppers(read_events(path, "taobao")[0])
    assert len(scores.ids) == shoppers and np.isfinite(scores.scores).all()
    # both inputs, or neither: a one-line error, exit 2
    assert main(["train", "--shards", str(tmp_path / "tok"), "--data", str(path), "--out",
                 str(tmp_path / "m2")]) == 2
    assert main(["train", "--out", str(tmp_path / "m2")]) == 2
    assert "exactly one of them" in capsys.readouterr().err
