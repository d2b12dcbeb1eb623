"""Tests of reading, validating, quarantining and writing event files."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.formats import parse_mapping
from seqanom_core.ingest import (
    IngestReport,
    read_events,
    read_token_sequences,
    write_events,
)
from seqanom_core.schema import BEHAVIOR_CODE, EVENT_SCHEMA, SITE_FIELD, events_from_arrays

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public data samples not found at {DATA}")

TAOBAO_USERS = "taobao_userbehavior_users_sample.csv.gz"
TAOBAO_SLICE = "taobao_userbehavior_timeslice_sample.csv.gz"
TMALL = "tmall_2014_brand_behavior_log.csv.gz"
REES46 = "rees46_2019oct_timeslice_sample.csv.gz"
YOOCHOOSE = "yoochoose_clicks_100k_sample.csv.gz"
DIGINETICA = "diginetica_train_item_views_sample.csv.gz"


def utc(text: str) -> float:
    """Return Unix seconds of an ISO date-time taken as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    """Write a text file (gzip when the name ends in .gz) and return its path."""
    p = tmp_path / name
    data = text.encode(encoding)
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return p


def sample_lines(name: str, n: int | None = None) -> list[str]:
    """Return the first n lines (header included) of a public sample."""
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines if n is None else lines[:n]


def check_report(report: IngestReport, table: pa.Table) -> None:
    """Check the invariants every report must satisfy."""
    assert report.rows_kept == table.num_rows
    assert report.rows_read == report.rows_kept + sum(report.rejected.values())
    assert all(v > 0 for v in report.rejected.values())


def read_quarantine(p: Path) -> list[dict[str, str]]:
    """Return the rows of a quarantine CSV."""
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def counts(table: pa.Table, column: str) -> dict:
    """Return value -> count of a column."""
    vc = pc.value_counts(table.column(column)).to_pylist()
    return {d["values"]: d["counts"] for d in vc}


# --------------------------------------------------------------------------- public samples


@needs_data
def test_taobao_users_sample() -> None:
    table, report = read_events(DATA / TAOBAO_USERS, "taobao")
    assert table.schema.equals(EVENT_SCHEMA)
    assert (report.rows_read, report.rows_kept, report.rejected) == (84287, 84287, {})
    assert report.format == "taobao" and report.source.endswith(TAOBAO_USERS)
    assert len(pc.unique(table.column("user_id"))) == 814
    assert len(pc.unique(table.column("item_id"))) == 55233
    assert len(pc.unique(table.column("category_id"))) == 2911
    code = BEHAVIOR_CODE
    assert counts(table, "behavior") == {code["view"]: 75693, code["cart"]: 4494, code["fav"]: 2351, code["buy"]: 1749}
    ts = table.column("timestamp")
    assert pc.min(ts).as_py() == utc("2017-09-11T08:16:39")
    assert pc.max(ts).as_py() == utc("2017-12-03T15:59:23")
    assert table.column("user_id")[0].as_py() == "1" and table.column("user_id")[-1].as_py() == "1003693"  # README says 100369
    assert "84,287 rows read, 84,287 kept" in report.summary()
    check_report(report, table)


@needs_data
def test_taobao_timeslice_sample() -> None:
    table, report = read_events(DATA / TAOBAO_SLICE, "taobao")
    assert report.rows_kept == 110300 and len(pc.unique(table.column("user_id"))) == 66454
    assert pc.min(table.column("timestamp")).as_py() == utc("2017-11-26T01:00:00")
    assert pc.max(table.column("timestamp")).as_py() == utc("2017-11-26T03:10:11")


@needs_data
def test_tmall_sample() -> None:
    table, report = read_events(DATA / TMALL, "tmall")
    assert (report.rows_read, report.rows_kept) == (182880, 182880)
    assert len(pc.unique(table.column("user_id"))) == 884
    assert len(pc.unique(table.column("item_id"))) == 9531
    assert table.column("category_id").equals(table.column("item_id"))
    code = BEHAVIOR_CODE
    assert counts(table, "behavior") == {code["view"]: 174539, code["buy"]: 6984, code["fav"]: 1204, code["cart"]: 153}
    months = pc.month(pc.cast(pc.multiply(table.column("timestamp"), 1000).cast(pa.int64()), pa.timestamp("ms")))
    assert counts(pa.table({"m": months}), "m") == {4: 19580, 5: 40325, 6: 44192, 7: 53625, 8: 25158}
    assert table.slice(0, 1).to_pylist()[0] == {
        "user_id": "10944750", "item_id": "13451", "category_id": "13451",
        "behavior": code["view"], "timestamp": utc("2014-06-04T00:00:00"),
    }
    assert pc.min(table.column("timestamp")).as_py() == utc("2014-04-15T00:00:00")
    assert pc.max(table.column("timestamp")).as_py() == utc("2014-08-15T00:00:00")


@needs_data
def test_rees46_sample() -> None:
    table, report = read_events(DATA / REES46, "rees46")
    assert (report.rows_kept, report.rejected) == (17433, {})
    assert len(pc.unique(table.column("user_id"))) == 4504
    assert len(pc.unique(table.column("item_id"))) == 6492
    assert len(pc.unique(table.column("category_id"))) == 434
    code = BEHAVIOR_CODE
    assert counts(table, "behavior") == {code["view"]: 17054, code["buy"]: 214, code["cart"]: 165}
    assert pc.min(table.column("timestamp")).as_py() == utc("2019-10-01T00:00:00")
    assert pc.max(table.column("timestamp")).as_py() == utc("2019-10-01T02:50:00")
    assert table.column("item_id")[0].as_py() == "44600062"


@needs_data
def test_yoochoose_prepared_sample() -> None:
    table, report = read_events(DATA / YOOCHOOSE, "yoochoose")
    assert report.rows_kept == 83846
    assert len(pc.unique(table.column("user_id"))) == 21210
    assert len(pc.unique(table.column("item_id"))) == 2933
    assert counts(table, "behavior") == {BEHAVIOR_CODE["view"]: 83846}
    assert table.column("timestamp")[0].as_py() == 1396437466.94
    assert pc.min(table.column("timestamp")).as_py() == pytest.approx(utc("2014-04-01T01:02:21"), abs=1)
    assert pc.max(table.column("timestamp")).as_py() == pytest.approx(utc("2014-04-08T00:50:01"), abs=1)


@needs_data
def test_diginetica_sample() -> None:
    table, report = read_events(DATA / DIGINETICA, "diginetica")
    assert report.rows_kept == 12391
    assert len(pc.unique(table.column("user_id"))) == 2986
    assert len(pc.unique(table.column("item_id"))) == 7139
    first = table.slice(0, 1).to_pylist()[0]
    assert first["user_id"] == "1" and first["item_id"] == "81766"
    assert first["timestamp"] == utc("2016-05-09T00:00:00") + 526.309
    days = pc.floor(pc.divide(table.column("timestamp"), 86400.0))
    assert pc.min(days).as_py() * 86400 == utc("2016-01-03T00:00:00")
    assert pc.max(days).as_py() * 86400 == utc("2016-06-01T00:00:00")


# --------------------------------------------------------------------------- headerless and variants


@needs_data
@pytest.mark.parametrize(
    ("name", "fmt"),
    [(TAOBAO_USERS, "taobao"), (TMALL, "tmall"), (REES46, "rees46"), (YOOCHOOSE, "yoochoose"), (DIGINETICA, "diginetica")],
)
def test_headerless_copy_reads_the_same(tmp_path: Path, name: str, fmt: str) -> None:
    lines = sample_lines(name, 3001)
    with_header = write(tmp_path, "h.csv", "\n".join(lines) + "\n")
    without = write(tmp_path, "n.csv.gz", "\n".join(lines[1:]) + "\n")
    a, ra = read_events(with_header, fmt)
    b, rb = read_events(without, fmt)
    assert a.num_rows == 3000 and rb.rows_read == 3000
    assert a.equals(b)


@needs_data
def test_tmall_chinese_dates_and_gbk(tmp_path: Path) -> None:
    lines = sample_lines(TMALL, 2001)
    chinese = [lines[0]] + [
        ",".join([*r.split(",")[:3], "{}月{}日".format(*r.split(",")[3].split("-"))]) for r in lines[1:]
    ]
    assert chinese[1].endswith("6月4日")
    reference, _ = read_events(write(tmp_path, "a.csv", "\n".join(lines)), "tmall")
    utf8, _ = read_events(write(tmp_path, "b.csv", "\n".join(chinese[1:])), "tmall")
    gbk, _ = read_events(write(tmp_path, "c.csv", "\n".join(chinese), encoding="gbk"), "tmall")
    assert reference.num_rows == 2000
    assert utf8.equals(reference) and gbk.equals(reference)


def test_yoochoose_original_clicks_and_buys(tmp_path: Path) -> None:
    clicks = write(
        tmp_path,
        "yoochoose-clicks.dat",
        "1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,S\n"
        "2,2014-04-07T13:56:37.614Z,214662742,2053\n",
    )
    table, report = read_events(clicks, "yoochoose")
    assert table.column("category_id").to_pylist() == ["0", "S", "2053"]
    assert table.column("timestamp")[0].as_py() == pytest.approx(utc("2014-04-07T10:51:09.277"), abs=1e-6)
    assert table.column("behavior").to_pylist() == [0, 0, 0]
    buys = write(tmp_path, "yoochoose-buys.dat", "420374,2014-04-06T18:44:58.314Z,214537888,12462,1\n")
    table, _ = read_events(buys, "yoochoose")
    assert table.to_pylist() == [{
        "user_id": "420374", "item_id": "214537888", "category_id": "214537888",
        "behavior": BEHAVIOR_CODE["buy"], "timestamp": pytest.approx(utc("2014-04-06T18:44:58.314")),
    }]


def test_retailrocket_header_and_headerless(tmp_path: Path) -> None:
    body = (
        "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n1433221955914,483717,remove,253185,\n"
    )
    for text in ("timestamp,visitorid,event,itemid,transactionid\n" + body, body):
        table, report = read_events(write(tmp_path, "events.csv", text), "retailrocket")
        assert table.column("behavior").to_pylist() == [0, 1, 3]
        assert table.column("user_id").to_pylist() == ["257597", "992329", "111016"]
        assert table.column("category_id").equals(table.column("item_id"))
        assert table.column("timestamp")[0].as_py() == 1433221332.117
        assert report.rejected == {"unknown behaviour": 1}
        check_report(report, table)


def test_rees46_remove_from_cart_is_its_own_reason(tmp_path: Path) -> None:
    text = (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-11-01 00:00:00 UTC,view,1,10,,b,1.0,100,s\n"
        "2019-11-01 00:00:01 UTC,remove_from_cart,2,10,,b,1.0,100,s\n"
        "2019-11-01 00:00:02 UTC,purchase,3,10,a.b,,2.0,101,t\n"
    )
    q = tmp_path / "q.csv"
    table, report = read_events(write(tmp_path, "r.csv", text), "rees46", quarantine_path=q)
    assert table.column("item_id").to_pylist() == ["1", "3"]
    assert report.rejected == {"remove_from_cart event (not modelled)": 1}
    assert [(r["line"], r["event_type"]) for r in read_quarantine(q)] == [("3", "remove_from_cart")]


def test_seqanom_integer_codes_and_site_variants(tmp_path: Path) -> None:
    text = "u1,i1,c1,0,1500000010\nu1,i2,c1,buy,1500000011.5\nu2,i3,c2,3,1500000012\n"
    table, _ = read_events(write(tmp_path, "e.csv", text), "seqanom")
    assert table.column("behavior").to_pylist() == [0, 3, 3]
    assert table.column("timestamp").to_pylist() == [1500000010.0, 1500000011.5, 1500000012.0]
    with_site = write(tmp_path, "s.csv", "u1,i1,c1,view,1500000010,shopA\n")
    table, _ = read_events(with_site, "seqanom")
    assert table.schema.equals(EVENT_SCHEMA.append(SITE_FIELD))
    assert table.column("site").to_pylist() == ["shopA"]


# --------------------------------------------------------------------------- writing and round trips


@needs_data
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_write_events_round_trip(tmp_path: Path, suffix: str) -> None:
    table, _ = read_events(DATA / YOOCHOOSE, "yoochoose", site="eu-1")
    table = table.slice(0, 5000)
    out = tmp_path / f"events{suffix}"
    write_events(table, out)
    back, report = read_events(out, "seqanom")
    assert back.equals(table)
    assert report.rows_read == 5000
    if suffix == ".csv":
        assert out.read_text().splitlines()[:2] == [
            "user_id,item_id,category_id,behavior,timestamp,site",
            "3,214716935,214716935,view,1396437466.94,eu-1",
        ]
    if suffix == ".parquet":
        assert pq.read_schema(out).field("behavior").type == pa.string()


def test_write_events_rejects_bad_tables(tmp_path: Path) -> None:
    good = events_from_arrays(["u"], ["i"], ["c"], [0], [1.0])
    with pytest.raises(DataFileError, match="events.json: unknown output extension"):
        write_events(good, tmp_path / "events.json")
    bad = events_from_arrays(["u"], ["i"], ["c"], [7], [1.0])
    with pytest.raises(SchemaError, match="outside 0..3"):
        write_events(bad, tmp_path / "e.csv")
    with pytest.raises(SchemaError, match="missing column 'timestamp'"):
        write_events(good.drop(["timestamp"]), tmp_path / "e.csv")
    assert not (tmp_path / "e.csv").exists()


def test_parquet_input_mapped_by_names(tmp_path: Path) -> None:
    p = tmp_path / "site.parquet"
    pq.write_table(
        pa.table({
            "extra": [1, 2, 3],
            "BEHAVIOR_TYPE": ["pv", "buy", "jump"],
            "User_Id": [5, 6, None],
            "item_id": [7, 8, 9],
            "category_id": ["a", "b", "c"],
            "timestamp": pa.array([1_600_000_000, 1_600_000_001, 1_600_000_002], pa.int64()),
        }),
        p,
    )
    q = tmp_path / "q.csv"
    table, report = read_events(p, "taobao", quarantine_path=q)
    assert table.to_pylist() == [
        {"user_id": "5", "item_id": "7", "category_id": "a", "behavior": 0, "timestamp": 1.6e9},
        {"user_id": "6", "item_id": "8", "category_id": "b", "behavior": 3, "timestamp": 1.6e9 + 1},
    ]
    assert report.rejected == {"null user_id": 1}
    assert [(r["line"], r["reason"], r["BEHAVIOR_TYPE"]) for r in read_quarantine(q)] == [("3", "null user_id", "jump")]
    pq.write_table(pa.table({"user_id": [1], "item_id": [2]}), tmp_path / "short.parquet")
    with pytest.raises(SchemaError, match=r"short.parquet: no column for field\(s\) .*'timestamp'.*columns found: user_id, item_id"):
        read_events(tmp_path / "short.parquet", "taobao")


def test_parquet_timestamp_types(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    stamps = pa.array([datetime(2020, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"u": ["a"], "i": ["b"], "t": stamps}), p)
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=t")
    table, _ = read_events(p, spec)
    assert table.column("timestamp").to_pylist() == [utc("2020-01-02T03:04:05.5")]


def test_site_argument_and_row_order(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,category_id,behavior_type,timestamp\n"
        "9,1,1,pv,1500000030\n1,2,1,pv,1500000010\n5,3,1,buy,1500000020\n"
    )
    table, _ = read_events(write(tmp_path, "t.csv", text), "taobao", site="shop-7")
    assert table.column("user_id").to_pylist() == ["9", "1", "5"]
    assert table.column("site").to_pylist() == ["shop-7"] * 3
    with pytest.raises(ConfigError, match="site"):
        read_events(write(tmp_path, "t.csv", text), "taobao", site=" ")


# --------------------------------------------------------------------------- generic mapping


def test_generic_mapping(tmp_path: Path) -> None:
    text = (
        "visitorid;itemid;event;timestamp\n"
        "v1;10;view;1433221332117\nv1;11;addtocart;1433221332118\nv2;12;transaction;1433221332119\n"
    )
    mapping = (
        "user_id=visitorid,item_id=itemid,category_id=-,behavior=event,timestamp=timestamp,"
        "behaviors=view:view;addtocart:cart;transaction:buy,time=unix_ms,delimiter=;"
    )
    table, report = read_events(write(tmp_path, "custom.csv", text), mapping)
    assert report.format == "custom"
    assert table.column("behavior").to_pylist() == [0, 1, 3]
    assert table.column("category_id").to_pylist() == ["10", "11", "12"]
    assert table.column("timestamp")[2].as_py() == 1433221332.119
    headerless = write(tmp_path, "h.csv", "a|x|20200102|1\n")
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=d,time=date,"
                         "time_offset_ms=ms,delimiter=pipe,columns=u;i;d;ms,constant_behavior=fav")
    with pytest.raises(SchemaError, match=r"h.csv: field 'timestamp': no row parses as a date"):
        read_events(headerless, spec)
    table, _ = read_events(write(tmp_path, "h.csv", "a|x|2020-01-02|1500\n"), spec)
    assert table.to_pylist() == [{"user_id": "a", "item_id": "x", "category_id": "x",
                                  "behavior": BEHAVIOR_CODE["fav"], "timestamp": utc("2020-01-02T00:00:01.5")}]


def test_datetime_variants_and_strictness(tmp_path: Path) -> None:
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=t,time=datetime")
    text = (
        "u,i,t\n"
        "a,1,2019-10-01 00:00:00 UTC\n"
        "a,2,2019-10-01T02:00:00+02:00\n"
        "a,3,2019-10-01T00:00:00.250Z\n"
        "a,4,2019-02-30 00:00:00\n"
        "a,5,2019-10-01\n"
        "a,6,yesterday\n"
    )
    table, report = read_events(write(tmp_path, "d.csv", text), spec)
    assert table.column("timestamp").to_pylist() == [
        utc("2019-10-01T00:00:00"), utc("2019-10-01T00:00:00"), utc("2019-10-01T00:00:00.25"), utc("2019-10-01T00:00:00")
    ]
    assert report.rejected == {"unparseable timestamp": 2}


# --------------------------------------------------------------------------- row-level problems


def test_bad_rows_are_quarantined_with_lines_and_raw_values(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,category_id,behavior_type,timestamp\n"  # line 1
        "1,10,100,pv,1511544070\n"  # 2 ok
        "2,11,100,pv,abc\n"  # 3 unparseable timestamp
        ",12,100,pv,1511544071\n"  # 4 null user_id
        "3,13,100,jump,1511544072\n"  # 5 unknown behaviour
        "4,14,100,pv\n"  # 6 ragged
        "5,15,100,buy,1511544073,extra\n"  # 7 ragged
        "6,NA,100,cart,1511544074\n"  # 8 null item_id
        "7,16,,fav,1511544075\n"  # 9 null category_id
        "\n"  # 10 empty row
        "8,17,100,pv,1e400\n"  # 11 unparseable timestamp (overflow)
        "9,18,100,buy,1511544076.5\n"  # 12 ok
        ",,100,zzz,xyz\n"  # 13 null user_id wins over the rest
    )
    q = tmp_path / "sub" / "quarantine.csv"
    table, report = read_events(write(tmp_path, "t.csv", text), "taobao", quarantine_path=q)
    assert table.column("user_id").to_pylist() == ["1", "9"]
    assert table.column("timestamp").to_pylist() == [1511544070.0, 1511544076.5]
    assert report.rejected == {
        "unparseable timestamp": 2, "null user_id": 2, "ragged row": 2, "unknown behaviour": 1,
        "null item_id": 1, "null category_id": 1, "empty row": 1,
    }
    assert report.rows_read == 12 and report.quarantine_path == str(q)
    check_report(report, table)
    rows = read_quarantine(q)
    assert [(r["line"], r["reason"]) for r in rows] == [
        ("3", "unparseable timestamp"), ("4", "null user_id"), ("5", "unknown behaviour"),
        ("6", "ragged row"), ("7", "ragged row"), ("8", "null item_id"), ("9", "null category_id"),
        ("10", "empty row"), ("11", "unparseable timestamp"), ("13", "null user_id"),
    ]
    assert rows[0]["timestamp"] == "abc" and rows[0]["user_id"] == "2"
    assert rows[2]["behavior_type"] == "jump"
    assert rows[3]["raw"] == "4,14,100,pv" and rows[4]["raw"] == "5,15,100,buy,1511544073,extra"
    summary = report.summary()
    assert summary.startswith("t.csv: 12 rows read, 2 kept, 10 quarantined (")
    assert "2 unparseable timestamp" in summary and str(q) in summary
    assert report.to_dict()["rejected"] == report.rejected


def test_quarantine_file_written_even_when_clean(tmp_path: Path) -> None:
    q = tmp_path / "q.csv.gz"
    _, report = read_events(write(tmp_path, "t.csv", "1,2,3,pv,1511544070\n"), "taobao", quarantine_path=q)
    assert report.rejected == {}
    with gzip.open(q, "rt") as f:
        assert list(csv.reader(f)) == [
            ["line", "reason", "user_id", "item_id", "category_id", "behavior_type", "timestamp", "raw"]
        ]


def test_many_rows_counts_hold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 20000
    beh = rng.choice(np.array(["pv", "buy", "bogus", ""]), n, p=[0.9, 0.05, 0.03, 0.02])
    ts = np.where(rng.random(n) < 0.01, "x", rng.integers(10**9, 2 * 10**9, n).astype(str))
    users = np.where(rng.random(n) < 0.01, "", rng.integers(1, 100, n).astype(str))
    buf = io.StringIO()
    for row in zip(users, np.arange(n).astype(str), np.full(n, "7"), beh, ts, strict=True):
        buf.write(",".join(row) + "\n")
    table, report = read_events(write(tmp_path, "big.csv.gz", buf.getvalue()), "taobao")
    check_report(report, table)
    kept = (users != "") & (beh != "bogus") & (beh != "") & (ts != "x")
    assert table.num_rows == kept.sum()
    assert table.column("item_id").to_pylist() == np.arange(n)[kept].astype(str).tolist()
    assert report.rejected["null user_id"] == (users == "").sum()
    assert report.rejected["null behavior"] == ((beh == "") & (users != "")).sum()


# --------------------------------------------------------------------------- whole-file problems


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nothere.csv: no such file"):
        read_events(tmp_path / "nothere.csv", "taobao")


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="is a directory"):
        read_events(tmp_path, "taobao")


def test_empty_files(tmp_path: Path) -> None:
    for name, text in [("empty.csv", ""), ("blank.csv", "\n\n"), ("empty.csv.gz", "")]:
        with pytest.raises(DataFileError, match=f"{name}: file is empty"):
            read_events(write(tmp_path, name, text), "taobao")


def test_header_only_gives_empty_table(tmp_path: Path) -> None:
    p = write(tmp_path, "h.csv", "user_id,item_id,category_id,behavior_type,timestamp\n")
    table, report = read_events(p, "taobao")
    assert table.num_rows == 0 and table.schema.equals(EVENT_SCHEMA)
    assert (report.rows_read, report.rows_kept, report.rejected) == (0, 0, {})


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate" * 10)
    with pytest.raises(DataFileError, match="bad.csv.gz: corrupt"):
        read_events(p, "taobao")
    good = gzip.compress(("1,2,3,pv,4\n" * 50000).encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFileError, match="cut.csv.gz: "):
        read_events(truncated, "taobao")


def test_content_sniffing_beats_extension(tmp_path: Path) -> None:
    gz = tmp_path / "events.dat"
    gz.write_bytes(gzip.compress(b"1,2,3,pv,1511544070\n"))
    assert read_events(gz, "taobao")[0].num_rows == 1
    pqf = tmp_path / "events.bin"
    write_events(events_from_arrays(["u"], ["i"], ["c"], [1], [1.5e9]), tmp_path / "x.parquet")
    pqf.write_bytes((tmp_path / "x.parquet").read_bytes())
    assert read_events(pqf, "seqanom")[0].column("behavior").to_pylist() == [1]


def test_missing_column_names_field_and_columns_found(tmp_path: Path) -> None:
    p = write(tmp_path, "m.csv", "user_id,item_id,category_id,behavior_type,time_stamp_x\n1,2,3,pv,4\n")
    with pytest.raises(SchemaError, match=r"m.csv: no column for field\(s\) 'timestamp' .*columns found: user_id,"):
        read_events(p, "taobao")


def test_first_line_neither_header_nor_data(tmp_path: Path) -> None:
    # not a header: read positionally, so a wrong-format file fails on its rows
    for text in ("a,b,c,d,e\nx,y,z,pv,w\n", "1,2,3,pv\n", "1,2,3,pv,1511544070,5,6\n"):
        with pytest.raises(SchemaError, match="f.csv: "):
            read_events(write(tmp_path, "f.csv", text), "taobao")
    with pytest.raises(SchemaError, match=r"f.csv: no row has the 5 fields of format 'taobao' .*line 1: '1,2,3,pv'"):
        read_events(write(tmp_path, "f.csv", "1,2,3,pv\n4,5,6,buy\n"), "taobao")
    spec = parse_mapping("user_id=u,item_id=i,category_id=-,behavior=-,timestamp=t")  # header required
    with pytest.raises(SchemaError, match=r"f.csv: first line is not a 'custom' header; expected a header naming u, i, t"):
        read_events(write(tmp_path, "f.csv", "a,b,1511544070\n"), spec)


def test_all_timestamps_bad(tmp_path: Path) -> None:
    p = write(tmp_path, "ts.csv", "1,2,3,pv,1511544070\n1,2,3,pv,abc\n1,2,3,pv,def\n")
    table, report = read_events(p, "taobao")
    assert report.rejected == {"unparseable timestamp": 2}
    p = write(tmp_path, "ts.csv", "user_id,item_id,category_id,behavior_type,timestamp\n1,2,3,pv,abc\n1,2,3,pv,def\n")
    with pytest.raises(SchemaError, match=r"ts.csv: field 'timestamp': no row parses as Unix seconds \(e.g. 'abc'"):
        read_events(p, "taobao")


def test_all_behaviours_unknown_or_ids_null(tmp_path: Path) -> None:
    head = "user_id,item_id,category_id,behavior_type,timestamp\n"
    with pytest.raises(SchemaError, match=r"b.csv: field 'behavior': no row has a known behaviour value \(e.g. 'click'\)"):
        read_events(write(tmp_path, "b.csv", head + "1,2,3,click,4\n1,2,3,click,5\n"), "taobao")
    with pytest.raises(SchemaError, match="u.csv: field 'user_id': every row is empty"):
        read_events(write(tmp_path, "u.csv", head + ",2,3,pv,4\nNA,2,3,pv,5\n"), "taobao")


def test_unknown_format_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown format 'amazon'"):
        read_events(write(tmp_path, "t.csv", "1,2,3,pv,4\n"), "amazon")


def test_invalid_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes(b"1,2,3,pv,4\n" + "é,2,3,pv,4\n".encode("latin-1"))
    with pytest.raises(DataFileError, match="latin.csv: not valid"):
        read_events(p, "taobao")


# --------------------------------------------------------------------------- tokens


def test_token_sequences(tmp_path: Path) -> None:
    text = "5 3 9\n\n 7\t8 \n1 x 2\n4 -1\n99999999999999999999\n0 0 0\r\n12"
    q = tmp_path / "tq.csv"
    seqs, report = read_token_sequences(write(tmp_path, "seq.txt", text), quarantine_path=q)
    assert seqs.ids == ["0", "2", "6", "7"]
    assert [t.tolist() for t in seqs.tokens] == [[5, 3, 9], [7, 8], [0, 0, 0], [12]]
    assert all(t.dtype == np.int64 for t in seqs.tokens)
    assert report.rejected == {"non-integer token": 1, "negative token": 1, "token too large": 1, "empty line": 1}
    check_report(report, pa.table({"x": seqs.ids}))
    rows = read_quarantine(q)
    assert [(r["line"], r["id"], r["reason"], r["raw"]) for r in rows] == [
        ("2", "1", "empty line", ""),
        ("4", "3", "non-integer token", "1 x 2"), ("5", "4", "negative token", "4 -1"),
        ("6", "5", "token too large", "99999999999999999999"),
    ]


def test_token_sequences_gzip_and_errors(tmp_path: Path) -> None:
    seqs, report = read_token_sequences(write(tmp_path, "s.txt.gz", "1 2\n3\n"))
    assert seqs.ids == ["0", "1"] and report.rows_read == 2
    with pytest.raises(DataFileError, match="e.txt: file is empty"):
        read_token_sequences(write(tmp_path, "e.txt", ""))
    with pytest.raises(SchemaError, match=r"b.txt: no line is a sequence .*line 1: 'a b'"):
        read_token_sequences(write(tmp_path, "b.txt", "a b\nc\n"))
    with pytest.raises(DataFileError, match="no such file"):
        read_token_sequences(tmp_path / "none.txt")


def test_write_events_quotes_only_when_needed(tmp_path: Path) -> None:
    table = events_from_arrays(['a,"b"', "c"], ["i\nj", "k"], ["x", "y"], [0, 2], [1.5e9 + 0.25, 1.5e9])
    out = tmp_path / "q.csv"
    write_events(table, out)
    assert out.read_text().splitlines()[0] == "user_id,item_id,category_id,behavior,timestamp"
    back, _ = read_events(out, "seqanom")
    assert back.equals(table)
