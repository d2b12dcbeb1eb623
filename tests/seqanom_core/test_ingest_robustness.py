"""Input validation at the edges: blank ids, implausible or padded timestamps, headerless files
with a bad first row, blank token lines, generic mappings that contradict themselves, and binary
files."""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqanom_core.errors import ConfigError, SchemaError
from seqanom_core.formats import FormatSpec, parse_mapping
from seqanom_core.ingest import OUT_OF_RANGE, read_events, read_token_sequences, write_events
from seqanom_core.schema import BEHAVIOR_CODE, TIMESTAMP_MAX, TIMESTAMP_MIN
from simulation.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public data samples not found at {DATA}")

TAOBAO_HEADER = "user_id,item_id,category_id,behavior_type,timestamp\n"
GENERIC = "user_id=u,item_id=i,category_id=-,behavior=b,timestamp=t"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    """Write a text file (gzip when the name ends in .gz) and return its path."""
    p = tmp_path / name
    data = text.encode("utf-8") if isinstance(text, str) else text
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return p


def read_quarantine(p: Path) -> list[dict[str, str]]:
    """Return the rows of a quarantine CSV."""
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def utc(text: str) -> float:
    """Return Unix seconds of an ISO date-time taken as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------- 1. blank ids


def test_blank_ids_are_quarantined_like_null_ids(tmp_path: Path) -> None:
    text = TAOBAO_HEADER + (
        "1,10,100,pv,1511544070\n"  # 2 ok
        " ,11,100,pv,1511544071\n"  # 3 blank user
        "2,\t,100,pv,1511544072\n"  # 4 blank item (tab)
        "3,12,   ,pv,1511544073\n"  # 5 blank category
        "\u3000,13,100,pv,1511544074\n"  # 6 ideographic space
        "NA,14,100,pv,1511544075\n"  # 7 null user
        " 7 ,15, c ,pv,1511544076\n"  # 8 ok: padded ids are kept as they are
    )
    q = tmp_path / "q.csv"
    table, report = read_events(write(tmp_path, "t.csv", text), "taobao", quarantine_path=q)
    assert table.column("user_id").to_pylist() == ["1", " 7 "]
    assert table.column("category_id").to_pylist() == ["100", " c "]
    assert report.rejected == {"null user_id": 3, "null item_id": 1, "null category_id": 1}
    assert [(r["line"], r["reason"]) for r in read_quarantine(q)] == [
        ("3", "null user_id"), ("4", "null item_id"), ("5", "null category_id"),
        ("6", "null user_id"), ("7", "null user_id"),
    ]


def test_blank_ids_in_parquet_and_site(tmp_path: Path) -> None:
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({
        "u": ["a", "", "  ", "b"], "i": ["x", "y", "z", "w"], "s": ["eu", "eu", "eu", " "],
        "t": pa.array([1.6e9] * 4),
    }), p)
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=t,site=s")
    table, report = read_events(p, spec)
    assert table.column("user_id").to_pylist() == ["a"]
    assert report.rejected == {"null user_id": 2, "null site": 1}


def test_every_id_blank_is_a_file_error(tmp_path: Path) -> None:
    p = write(tmp_path, "u.csv", TAOBAO_HEADER + " ,2,3,pv,1511544070\n  ,2,3,pv,1511544071\n")
    with pytest.raises(SchemaError, match="u.csv: field 'user_id': every row is empty"):
        read_events(p, "taobao")


# --------------------------------------------------------------------------- 2. timestamp window


def test_out_of_range_unix_seconds_are_quarantined(tmp_path: Path) -> None:
    bad = ["-5", "0", "99999999999", "1511544070000", "1e23", "1e300", "-1e300", "631151999", "4102444801"]
    good = ["1511544070", str(int(TIMESTAMP_MIN)), str(int(TIMESTAMP_MAX))]
    rows = [f"{k},2,3,pv,{t}" for k, t in enumerate(good + bad)]
    q = tmp_path / "q.csv"
    table, report = read_events(write(tmp_path, "t.csv", "\n".join(rows) + "\n"), "taobao", quarantine_path=q)
    assert table.column("timestamp").to_pylist() == [1511544070.0, TIMESTAMP_MIN, TIMESTAMP_MAX]
    assert report.rejected == {OUT_OF_RANGE: len(bad)}
    assert "out of range" in OUT_OF_RANGE and "1990-01-01" in OUT_OF_RANGE and "2100-01-01" in OUT_OF_RANGE
    assert OUT_OF_RANGE in report.summary()
    quarantined = read_quarantine(q)
    assert [r["timestamp"] for r in quarantined] == bad
    assert {r["reason"] for r in quarantined} == {OUT_OF_RANGE}


def test_unparseable_wins_over_out_of_range(tmp_path: Path) -> None:
    text = "1,2,3,pv,1511544070\n1,2,3,pv,1e400\n1,2,3,pv,inf\n1,2,3,pv,5\n"
    _, report = read_events(write(tmp_path, "t.csv", text), "taobao")
    assert report.rejected == {"unparseable timestamp": 2, OUT_OF_RANGE: 1}


def test_whole_column_out_of_range_names_file_field_and_unit(tmp_path: Path) -> None:
    text = TAOBAO_HEADER + "1,2,3,pv,1511544070000\n1,2,3,pv,1511544071000\n"
    with pytest.raises(SchemaError, match=(
        r"ms.csv: field 'timestamp': no row has a time in 1990-01-01..2100-01-01 UTC "
        r"\(e.g. '1511544070000' is .*\).*look like Unix milliseconds"
    )):
        read_events(write(tmp_path, "ms.csv", text), "taobao")
    spec = parse_mapping(GENERIC + ",time=unix_ms")
    with pytest.raises(SchemaError, match=r"s.csv: field 'timestamp': no row has a time.*look like Unix seconds"):
        read_events(write(tmp_path, "s.csv", "u,i,b,t\na,b,view,1511544070\n"), spec)
    with pytest.raises(SchemaError, match=r"z.csv: field 'timestamp': no row has a time.*'1e300'"):
        read_events(write(tmp_path, "z.csv", "1,2,3,pv,1e300\n1,2,3,pv,-4\n"), "taobao")


@pytest.mark.parametrize(
    ("time", "values", "kept"),
    [
        ("datetime", ["2019-10-01 00:00:00 UTC", "1989-12-31 23:59:59 UTC", "2100-01-01T00:00:01Z", "0001-01-01"], 1),
        ("date", ["2016-05-09", "1900-01-01", "9999-12-31"], 1),
        ("unix_ms", ["1433221332117", "1433221332", "-1"], 1),
    ],
)
def test_window_applies_to_every_time_kind(tmp_path: Path, time: str, values: list[str], kept: int) -> None:
    text = "u,i,b,t\n" + "".join(f"a,{k},view,{v}\n" for k, v in enumerate(values))
    table, report = read_events(write(tmp_path, "t.csv", text), parse_mapping(GENERIC + f",time={time}"))
    assert table.num_rows == kept
    assert report.rejected == {OUT_OF_RANGE: len(values) - kept}


def test_window_applies_to_month_day_and_date_offsets(tmp_path: Path) -> None:
    spec = parse_mapping(GENERIC + ",time=month_day:1985")
    with pytest.raises(SchemaError, match="md.csv: field 'timestamp': no row has a time in 1990"):
        read_events(write(tmp_path, "md.csv", "u,i,b,t\na,b,view,6-4\n"), spec)
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=d,time=date,time_offset_ms=ms")
    text = "u,i,d,ms\na,b,2016-05-09,526309\na,c,2016-05-09,1e20\n"
    table, report = read_events(write(tmp_path, "o.csv", text), spec)
    assert table.column("timestamp").to_pylist() == [utc("2016-05-09T00:00:00") + 526.309]
    assert report.rejected == {OUT_OF_RANGE: 1}


def test_window_applies_to_parquet_columns(tmp_path: Path) -> None:
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=t")
    columns = {
        "int_ms_as_seconds": pa.array([1_600_000_000, 1_600_000_000_000], pa.int64()),
        "float": pa.array([1.6e9, -1e300], pa.float64()),
        "timestamp": pa.array([datetime(2020, 1, 2), datetime(1970, 1, 1, 0, 0, 5)], pa.timestamp("s")),
        "date": pa.array([date(2020, 1, 2), date(1900, 1, 1)], pa.date32()),
    }
    for name, stamps in columns.items():
        p = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", "y"], "t": stamps}), p)
        table, report = read_events(p, spec)
        assert table.column("user_id").to_pylist() == ["a"], name
        assert report.rejected == {OUT_OF_RANGE: 1}, name
    p = tmp_path / "all_ms.parquet"
    pq.write_table(pa.table({"u": ["a"], "i": ["x"], "t": pa.array([1_600_000_000_000], pa.int64())}), p)
    with pytest.raises(SchemaError, match="all_ms.parquet: field 'timestamp': no row has a time"):
        read_events(p, spec)


@needs_data
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("taobao_userbehavior_users_sample.csv.gz", "taobao"),
        ("taobao_userbehavior_timeslice_sample.csv.gz", "taobao"),
        ("tmall_2014_brand_behavior_log.csv.gz", "tmall"),
        ("rees46_2019oct_timeslice_sample.csv.gz", "rees46"),
        ("yoochoose_clicks_100k_sample.csv.gz", "yoochoose"),
        ("diginetica_train_item_views_sample.csv.gz", "diginetica"),
    ],
)
def test_public_samples_are_inside_the_window(name: str, fmt: str) -> None:
    _, report = read_events(DATA / name, fmt)
    assert report.rejected == {}


def test_synthetic_events_are_inside_the_window(tmp_path: Path) -> None:
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=50, seed=0))
    write_events(events, tmp_path / "s.csv.gz")
    table, report = read_events(tmp_path / "s.csv.gz", "seqanom")
    assert report.rejected == {} and table.num_rows == events.num_rows


# --------------------------------------------------------------------------- 3. padded timestamps


def test_timestamps_tolerate_surrounding_whitespace(tmp_path: Path) -> None:
    text = TAOBAO_HEADER + "1,2,3, pv ,1511544070\n1,2,3,pv, 1511544071 \n1,2,3,pv,\t1511544072.5\t\n1,2,3,pv,  \n"
    table, report = read_events(write(tmp_path, "t.csv", text), "taobao")
    assert table.column("timestamp").to_pylist() == [1511544070.0, 1511544071.0, 1511544072.5]
    assert report.rejected == {"null timestamp": 1}  # blank, like a blank id
    text = "timestamp,visitorid,event,itemid,transactionid\n 1433221332117 ,1,view,2,\n1433221332118,1, view ,2,\n"
    table, report = read_events(write(tmp_path, "rr.csv", text), "retailrocket")
    assert table.column("timestamp").to_pylist() == [1433221332.117, 1433221332.118]
    text = (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        " 2019-11-01 00:00:00 UTC ,view,1,10,,b,1.0,100,s\n"
    )
    table, report = read_events(write(tmp_path, "r.csv", text), "rees46")
    assert table.column("timestamp").to_pylist() == [utc("2019-11-01T00:00:00")]
    text = "session_id;user_id;item_id;timeframe;eventdate\n1;NA;81766; 526309 ; 2016-05-09 \n"
    table, report = read_events(write(tmp_path, "d.csv", text), "diginetica")
    assert table.column("timestamp").to_pylist() == [utc("2016-05-09T00:00:00") + 526.309]


# --------------------------------------------------------------------------- 4. headerless, bad first row


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("1,2,3,pv,bad", "unparseable timestamp"),
        ("1,2,3,pv", "ragged row"),
        (",2,3,pv,1511544070", "null user_id"),
        ("1,2,3,jump,1511544070", "unknown behaviour"),
        ("1,2,3,pv,1511544070,extra", "ragged row"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_headerless_bad_first_row_is_quarantined(tmp_path: Path, first: str, reason: str, suffix: str) -> None:
    text = first + "\n5,6,7,buy,1511544071\n8,9,7,pv,1511544072\n"
    q = tmp_path / "q.csv"
    table, report = read_events(write(tmp_path, "UserBehavior" + suffix, text), "taobao", quarantine_path=q)
    assert table.column("user_id").to_pylist() == ["5", "8"]
    assert report.rejected == {reason: 1} and report.rows_read == 3
    assert [(r["line"], r["reason"]) for r in read_quarantine(q)] == [("1", reason)]


def test_headerless_bad_first_row_picks_the_variant_the_other_rows_fit(tmp_path: Path) -> None:
    prepared = "1,214536502,bad,train\n1,214536500,1396437466.94,train\n2,214662742,1396437467,test\n"
    table, report = read_events(write(tmp_path, "y.csv", prepared), "yoochoose")
    assert table.column("item_id").to_pylist() == ["214536500", "214662742"]
    assert report.rejected == {"unparseable timestamp": 1}
    clicks = "1,yesterday,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,S\n"
    table, report = read_events(write(tmp_path, "c.csv", clicks), "yoochoose")
    assert table.column("category_id").to_pylist() == ["S"]
    with_site = "u1,i1,c1,view,bad,shopA\nu2,i2,c2,buy,1511544070,shopA\n"
    table, _ = read_events(write(tmp_path, "s.csv", with_site), "seqanom")
    assert table.column("site").to_pylist() == ["shopA"]


def test_wrong_format_without_header_still_fails_clearly(tmp_path: Path) -> None:
    rees = "2019-11-01 00:00:00 UTC,view,1,10,,b,1.0,100,s\n2019-11-01 00:00:01 UTC,view,2,10,,b,1.0,100,s\n"
    with pytest.raises(SchemaError, match=r"r.csv: no row has the 5 fields of format 'taobao' .*line 1: '2019-11-01"):
        read_events(write(tmp_path, "r.csv", rees), "taobao")
    other = "1,2,3,4,5\n6,7,8,9,10\n"  # right width, nothing parses
    with pytest.raises(SchemaError, match="o.csv: field 'behavior': no row has a known behaviour value"):
        read_events(write(tmp_path, "o.csv", other), "taobao")


def test_header_of_another_format_keeps_its_message(tmp_path: Path) -> None:
    rees = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
    with pytest.raises(SchemaError, match=r"h.csv: no column for field\(s\) 'item_id' .*'behavior'.*of format 'taobao'"):
        read_events(write(tmp_path, "h.csv", rees + "2019-11-01 00:00:00 UTC,view,1,10,,b,1.0,100,s\n"), "taobao")


# --------------------------------------------------------------------------- 5. tokens


def test_blank_token_lines_are_quarantined_and_ids_keep_line_numbers(tmp_path: Path) -> None:
    text = "1 2\n\n   \n3\n\t\r\n4 5 6\n"
    q = tmp_path / "q.csv"
    seqs, report = read_token_sequences(write(tmp_path, "s.txt", text), quarantine_path=q)
    assert seqs.ids == ["0", "3", "5"]
    assert [t.tolist() for t in seqs.tokens] == [[1, 2], [3], [4, 5, 6]]
    assert report.rejected == {"empty line": 3} and report.rows_read == 6
    assert [(r["line"], r["id"], r["reason"]) for r in read_quarantine(q)] == [
        ("2", "1", "empty line"), ("3", "2", "empty line"), ("5", "4", "empty line"),
    ]


@pytest.mark.parametrize("name", ["b.txt", "b.txt.gz"])
def test_token_file_with_byte_order_mark(tmp_path: Path, name: str) -> None:
    seqs, report = read_token_sequences(write(tmp_path, name, b"\xef\xbb\xbf1 2\n3\n"))
    assert seqs.ids == ["0", "1"] and [t.tolist() for t in seqs.tokens] == [[1, 2], [3]]
    assert report.rejected == {}


def test_token_file_of_only_blank_or_bad_lines(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"x.txt: no line is a sequence .*line 2: 'a'"):
        read_token_sequences(write(tmp_path, "x.txt", "\na\n \n"))


# --------------------------------------------------------------------------- 6-7. mapping options


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (",encoding=nosuch", "mapping: encoding 'nosuch' is not a known text encoding"),
        (",encoding=base64", "mapping: encoding 'base64' is not a known text encoding"),
        (",behaviors=view:view;view:buy", "behaviour value 'view' is mapped twice, to 'view' and to 'buy'"),
        (",behaviors=View:view; view :buy", "behaviour value 'view' is mapped twice, to 'view' and to 'buy'"),
        (",behaviors=view:view;buy:buy,drop=view", "behaviour value 'view' is both dropped and mapped to 'view'"),
        (",behaviors=view:view;buy:buy,drop=BUY", "behaviour value 'BUY' is both dropped and mapped to 'buy'"),
        (",time_offset_ms=t", "fields 'timestamp' and 'timestamp_offset' both read column 't'"),
        (",site=U", "fields 'user_id' and 'site' both read column 'U'"),
    ],
)
def test_mapping_rejects_bad_encodings_and_conflicts(extra: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_mapping(GENERIC + extra)


def test_two_fields_on_one_column() -> None:
    with pytest.raises(ConfigError, match="fields 'user_id' and 'item_id' both read column 'visitorid'"):
        parse_mapping("user_id=visitorid,item_id=visitorid,category_id=-,behavior=event,timestamp=timestamp")
    with pytest.raises(ConfigError, match="fields 'item_id' and 'behavior' both read column 'Item-ID'"):
        parse_mapping("user_id=u,item_id=item_id,category_id=-,behavior=Item-ID,timestamp=t")
    with pytest.raises(ConfigError, match="fields 'user_id' and 'timestamp' both read"):
        FormatSpec(name="x", user_id="u", item_id="i", timestamp="u")
    # the category read from the item column is what category_id=- means: allowed
    spec = parse_mapping("user_id=u,item_id=i,category_id=i,behavior=b,timestamp=t")
    assert spec.category_id == "i"


def test_drop_takes_a_value_out_of_the_default_behaviours(tmp_path: Path) -> None:
    spec = parse_mapping(GENERIC + ",drop=view;0")
    text = "u,i,b,t\na,1,view,1511544070\na,2,buy,1511544071\na,3,0,1511544072\n"
    table, report = read_events(write(tmp_path, "d.csv", text), spec)
    assert table.column("behavior").to_pylist() == [BEHAVIOR_CODE["buy"]]
    assert report.rejected == {"view event (not modelled)": 1, "0 event (not modelled)": 1}
    assert parse_mapping(GENERIC + ",behaviors=view:view;VIEW:view").behavior_values() == {"view": 0}


def test_bad_mapping_is_a_one_line_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path, "e.csv", "u,i,b,t\na,1,view,1511544070\n")
    for extra in (",encoding=nosuch", ",behaviors=view:view;view:buy"):
        code = main(["-q", "train", "--data", str(data), "--format", "generic",
                     "--mapping", GENERIC + extra, "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and "mapping" in err


# --------------------------------------------------------------------------- 6. binary input


@pytest.mark.parametrize("name", ["bin.csv", "bin.csv.gz", "bin.txt"])
def test_binary_file_is_named_as_binary(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, name, b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 4)
    read = read_token_sequences if name.endswith(".txt") else (lambda q: read_events(q, "taobao"))
    with pytest.raises(Exception, match=r"bin\.\S+: binary data, not a text file \(a NUL byte at byte 4\)"):
        read(p)


def test_utf16_text_is_not_taken_for_binary(tmp_path: Path) -> None:
    text = "u,i,b,t\n" + "".join(f"{u},{u}{k},view,{1511544070 + k}\n" for u in range(3) for k in range(4))
    p = tmp_path / "wide.csv"
    p.write_bytes(text.encode("utf-16"))
    table, report = read_events(p, GENERIC + ",encoding=utf-16")
    assert report.rows_kept == 12 and table.num_rows == 12
