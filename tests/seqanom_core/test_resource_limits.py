"""Bounded resources: model settings and model files are checked against limits before anything
is allocated; token lines, parquet columns of unusual types and late non-ASCII bytes are read or
refused in one line, naming the file and the field or column."""

from __future__ import annotations

import csv
import datetime
import decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqanom_core.config import (
    MAX_LAYERS,
    MAX_PARAMETERS,
    ModelConfig,
    TokenizerConfig,
)
from seqanom_core.errors import ConfigError, DataFileError, ModelFileError, SchemaError
from seqanom_core.ingest import read_events, read_token_sequences
from seqanom_core.models import (
    LSTMNextEventModel,
    TransformerNextEventModel,
    backbone_kinds,
    build_model,
    check_model_size,
    check_weights_file,
)
from seqanom_core.sequences import vocab_sizes

VOCAB = vocab_sizes(TokenizerConfig(), "events")


# --------------------------------------------------------------------------- model settings
@pytest.mark.parametrize("settings, needle", [
    ({"n_layers": 10**6}, "n_layers must be at most 64"),
    ({"d_model": 10**7}, "d_model must be at most 4,096"),
    ({"n_heads": 1000, "d_model": 1000}, "n_heads must be at most 64"),
    ({"max_len": 10**9}, "max_len must be at most 8,192"),
    ({"n_layers": 2.0}, "n_layers must be a positive integer, not 2.0"),
    ({"d_model": "64"}, "d_model must be a positive integer, not '64'"),
])
def test_model_settings_over_their_limits_are_refused(settings, needle):
    with pytest.raises(ConfigError, match=needle):
        ModelConfig(**settings)


@pytest.mark.parametrize("settings, needle", [
    ({"category_buckets": 10**9}, "category_buckets must be at most"),
    ({"token_buckets": 10**9}, "token_buckets must be at most"),
    ({"gap_buckets": 10**6}, "gap_buckets must be at most"),
])
def test_tokenizer_bucket_counts_over_their_limits_are_refused(settings, needle):
    with pytest.raises(ConfigError, match=needle):
        TokenizerConfig(**settings)


@pytest.mark.parametrize("kind", backbone_kinds())
@pytest.mark.parametrize("source", ["events", "tokens"])
@pytest.mark.parametrize("history_copy", [True, False])
def test_parameter_count_without_building_is_exact(kind, source, history_copy):
    config = ModelConfig(kind=kind, d_model=24, n_heads=3, n_layers=2, max_len=40,
                         history_copy=history_copy)
    vocab = vocab_sizes(TokenizerConfig(category_buckets=10, token_buckets=30), source)
    model = build_model(config, vocab)
    assert check_model_size(config, vocab) == sum(p.numel() for p in model.parameters())


def test_a_backbone_that_does_not_count_is_counted_on_the_meta_device(monkeypatch):
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=16)
    exact = TransformerNextEventModel.parameter_count(config, VOCAB)
    monkeypatch.setattr(TransformerNextEventModel, "backbone_parameter_count",
                        classmethod(lambda cls, cfg: None))
    assert TransformerNextEventModel.parameter_count(config, VOCAB) == exact


def test_a_model_within_every_setting_limit_can_still_be_too_large():
    config = ModelConfig(d_model=4096, n_heads=64, n_layers=MAX_LAYERS, max_len=8192)
    with pytest.raises(ConfigError, match=r"12,9\d\d,\d{3},\d{3} parameters, more than the "
                                          f"limit of {MAX_PARAMETERS:,}"):
        build_model(config, VOCAB)
    lstm = ModelConfig(kind="lstm", d_model=4096, n_layers=MAX_LAYERS)
    assert LSTMNextEventModel.parameter_count(lstm, VOCAB) > MAX_PARAMETERS
    with pytest.raises(ConfigError, match="parameters, more than the limit"):
        check_model_size(lstm, VOCAB)


def test_weights_file_header_is_checked_before_its_data_is_read(tmp_path):
    from safetensors.numpy import save_file

    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=16), VOCAB)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(arrays, str(good))
    check_weights_file(good, model)  # the model's own weights pass
    big = tmp_path / "big.safetensors"
    save_file({**arrays, "emb.event.weight": np.zeros((VOCAB["event"], 512), np.float32)}, str(big))
    with pytest.raises(ModelFileError, match=r"big.safetensors: tensor 'emb.event.weight' has "
                                             r"shape \[259, 512\], the configured model's is "
                                             r"\[259, 16\]"):
        check_weights_file(big, model)
    extra = tmp_path / "extra.safetensors"
    save_file({**arrays, "blocks.9.fc1.weight": np.zeros((4, 4), np.float32)}, str(extra))
    with pytest.raises(ModelFileError, match="extra.safetensors: tensor 'blocks.9.fc1.weight' "
                                             "is not part of the configured model"):
        check_weights_file(extra, model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="junk.safetensors: not a readable safetensors file"):
        check_weights_file(junk, model)


# --------------------------------------------------------------------------- token files
def test_a_token_line_over_the_limit_is_quarantined_and_counted(tmp_path):
    path = tmp_path / "t.txt"
    normal = ["1 2 3", "4 5 6 7"]
    path.write_text("\n".join([normal[0], " ".join(["7"] * 1001), normal[1]]) + "\n")
    seqs, report = read_token_sequences(path, max_line_tokens=1000,
                                        quarantine_path=tmp_path / "q.csv")
    assert seqs.ids == ["0", "2"] and report.rows_read == 3
    assert report.rejected == {"more than 1,000 tokens": 1}
    assert "1 quarantined (1 more than 1,000 tokens)" in report.summary()
    with open(tmp_path / "q.csv", newline="") as f:
        quarantined = list(csv.reader(f))
    assert quarantined[1][:3] == ["2", "1", "more than 1,000 tokens"]  # line, id, reason
    kept, _ = read_token_sequences(path, max_line_tokens=1001)
    assert kept.ids == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="max_line_tokens must be a positive integer"):
        read_token_sequences(path, max_line_tokens=0)


def test_the_default_token_line_limit_applies(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 2 3\n" + " ".join(["5"] * 100_001) + "\n")
    seqs, report = read_token_sequences(path)
    assert seqs.ids == ["0"] and report.rejected == {"more than 100,000 tokens": 1}


def test_a_file_whose_only_line_is_too_long_is_one_line_error(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(" ".join(["5"] * 2001) + "\n")
    with pytest.raises(SchemaError, match=r"long.txt: no line is a sequence of at most 2,000 "
                                          r"non-negative integer tokens \(e.g. line 1: '5 5 .*': "
                                          r"more than 2,000 tokens\)"):
        read_token_sequences(path, max_line_tokens=2000)


# --------------------------------------------------------------------------- parquet columns
def _events(n: int = 6) -> dict[str, pa.Array]:
    return {"user_id": pa.array([str(i % 2) for i in range(n)]),
            "item_id": pa.array([str(i) for i in range(n)]),
            "category_id": pa.array(["c"] * n),
            "behavior": pa.array(["view"] * n),
            "timestamp": pa.array([1.5e9 + 60 * i for i in range(n)])}


NOT_UTF8 = pa.array([b"\xff\xfe"] * 6, pa.binary())
UNUSUAL = {
    "list": pa.array([[1]] * 6),
    "large_list": pa.array([[1]] * 6, pa.large_list(pa.int64())),
    "struct": pa.array([{"a": 1}] * 6),
    "map": pa.array([[("a", 1)]] * 6, pa.map_(pa.string(), pa.int64())),
    "binary": NOT_UTF8,
    "dictionary": pa.DictionaryArray.from_arrays(pa.array([0] * 6, pa.int32()),
                                                 pa.array([b"\xff"], pa.binary())),
}


# id columns of these types were already refused in one line; behaviour and time columns were
# internal errors, and so was an id column of a dictionary of bytes that are not UTF-8
@pytest.mark.parametrize("field, kind", [
    *((field, kind) for field in ("behavior", "timestamp") for kind in sorted(UNUSUAL)),
    ("user_id", "dictionary"),
])
def test_parquet_column_of_unusual_type_is_one_line_error_naming_it(tmp_path, field, kind):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({**_events(), field: UNUSUAL[kind]}), path)
    with pytest.raises(SchemaError) as err:
        read_events(path, "seqanom")
    text = str(err.value)
    assert text.startswith(f"{path}: field '{field}': column '{field}'") and "\n" not in text


def test_parquet_timestamps_of_every_unit_and_zone_are_converted(tmp_path):
    ns = 1_500_000_000_123_456_789  # a nanosecond part: no microsecond cast may refuse it
    cases = {
        "ns": (pa.array([ns + i for i in range(6)], pa.timestamp("ns")), ns / 1e9),
        "s_tz": (pa.array([1_500_000_000] * 6, pa.timestamp("s", tz="Asia/Shanghai")), 1.5e9),
        "date": (pa.array([datetime.date(2020, 1, 2)] * 6, pa.date32()), 1577923200.0),
        "decimal": (pa.array([decimal.Decimal("1500000000.25")] * 6, pa.decimal128(12, 2)),
                    1500000000.25),
    }
    for name, (column, first) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({**_events(), "timestamp": column}), path)
        table, report = read_events(path, "seqanom")
        assert report.rows_kept == 6, name
        assert table.column("timestamp")[0].as_py() == pytest.approx(first, abs=1e-6), name


def test_parquet_integer_times_beyond_float_precision_are_out_of_range_not_a_crash(tmp_path):
    path = tmp_path / "u.parquet"
    times = pa.array([1_500_000_000] * 5 + [2**64 - 1], pa.uint64())
    pq.write_table(pa.table({**_events(), "timestamp": times}), path)
    table, report = read_events(path, "seqanom")
    assert table.num_rows == 5 and sum(report.rejected.values()) == 1
    pq.write_table(pa.table({**_events(), "timestamp": pa.array([2**64 - 1] * 6, pa.uint64())}),
                   path)
    with pytest.raises(SchemaError, match=r"u.parquet: field 'timestamp': no row has a time in"):
        read_events(path, "seqanom")


# --------------------------------------------------------------------------- encodings
def _tmall_rows(n: int) -> list[str]:
    return [f"{1000 + i // 40},{2000 + i % 97},{i % 4},{6 + i % 3}-{1 + i % 28}" for i in range(n)]


@pytest.mark.parametrize("compress", [False, True])
def test_gbk_text_after_the_first_64_kib_is_read_in_the_declared_encoding(tmp_path, compress):
    import gzip

    rows = _tmall_rows(4000)  # about 85 KiB of ASCII before the first Chinese date
    header = "user_id,brand_id,type,visit_datetime"
    late = ["77,88,1,7月9日", "77,89,0,7月10日"]
    text = "\n".join([header, *rows, *late]) + "\n"
    assert len(text.encode("gbk").split("月".encode("gbk"))[0]) > 1 << 16
    name = "t.csv.gz" if compress else "t.csv"
    data = text.encode("gbk")
    (tmp_path / name).write_bytes(gzip.compress(data) if compress else data)
    table, report = read_events(tmp_path / name, "tmall")
    assert report.rows_read == report.rows_kept == 4002
    (tmp_path / "u.csv").write_text(text, encoding="utf-8")
    reference, _ = read_events(tmp_path / "u.csv", "tmall")
    assert table.equals(reference)
    july_10 = datetime.datetime(2014, 7, 10, tzinfo=datetime.UTC).timestamp()
    assert table.column("timestamp")[-1].as_py() == july_10


def test_late_bytes_valid_in_no_declared_encoding_are_one_line_error(tmp_path):
    rows = _tmall_rows(4000)
    data = ("user_id,brand_id,type,visit_datetime\n" + "\n".join(rows) + "\n").encode()
    path = tmp_path / "bad.csv"
    path.write_bytes(data + b"1,2,0,6-4\xff\n")
    with pytest.raises(DataFileError) as err:
        read_events(path, "tmall")
    text = str(err.value)
    assert text.startswith(f"{path}: not valid text in utf-8 or gbk: ") and "\n" not in text
    assert "gbk" in text.split(": not valid text in utf-8 or gbk: ")[1]
