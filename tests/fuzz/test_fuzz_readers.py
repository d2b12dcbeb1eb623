"""Generated malformed files for every input format: a reader either raises a one-line
``SeqanomError`` naming the file, or returns a table with rows read = kept + quarantined. Never
another exception, never a hang (a fixed number of examples per format, no deadline per example
so a busy machine does not fail it)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqanom_core.errors import SeqanomError
from seqanom_core.formats import get_format, list_formats
from seqanom_core.ingest import read_events, read_token_sequences

EXAMPLES = 150  # per format
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

# values that look right for some column of some format, and values that are wrong for all
PLAUSIBLE = st.sampled_from([
    "1", "42", "1511544070", "1511544070000", "2017-11-25 12:00:00", "2015-06-01", "20170501",
    "pv", "cart", "fav", "buy", "view", "click", "addtocart", "transaction", "purchase",
    "remove_from_cart", "0", "1", "2", "3", "train", "test", "12.5", "electronics.phone",
    "0.0", "-1", "1e400", "NaN", "inf", "9" * 30, "",
])
GARBAGE = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
FIELD = st.one_of(PLAUSIBLE, PLAUSIBLE, GARBAGE, st.sampled_from(['"', '""', '"a,b"', "\\", "\t"]))


def _csv(rows: list[list[str]], header: list[str] | None, delimiter: str) -> str:
    lines = [delimiter.join(header)] if header is not None else []
    lines += [delimiter.join(row) for row in rows]
    return "\n".join(lines) + "\n"


@st.composite
def event_files(draw, fmt: str) -> bytes:
    """A file of format ``fmt``'s shape (its header or none, about its number of fields) with
    plausible and garbage values, sometimes ragged, sometimes in another encoding or gzipped,
    sometimes plain random bytes."""
    spec = get_format(fmt)
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    width = len(spec.columns)
    rows = draw(st.lists(st.lists(FIELD, min_size=max(1, width - 1), max_size=width + 1),
                         max_size=12))
    header = list(spec.columns) if draw(st.booleans()) else None
    text = _csv(rows, header, spec.delimiter)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "gbk", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 4)) == 0:
        data = gzip.compress(data)
    return data


def _check(path: Path, read) -> None:  # noqa: ANN001
    try:
        result, report = read(path)
    except SeqanomError as err:
        text = str(err)
        assert text and "\n" not in text.strip(), text
        assert path.name in text, text  # names the file
        return
    assert report.rows_read == report.rows_kept + sum(report.rejected.values()), report
    return result


@pytest.mark.parametrize("fmt", list_formats())
def test_a_malformed_file_of_any_format_is_read_or_refused_in_one_line(fmt, tmp_path):
    @FUZZ
    @given(data=event_files(fmt), suffix=st.sampled_from([".csv", ".csv.gz", ".txt"]))
    def run(data: bytes, suffix: str) -> None:
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(data)
        table = _check(path, lambda p: read_events(p, fmt))
        if table is not None:
            assert set(table.column_names) >= {"user_id", "item_id", "category_id",
                                               "behavior", "timestamp"}

    run()


@FUZZ
@given(lines=st.lists(st.one_of(
    st.lists(st.integers(-5, 2**70).map(str), max_size=8).map(" ".join), GARBAGE), max_size=10))
def test_a_malformed_tokens_file_is_read_or_refused_in_one_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("tokens") / "fuzz.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="replace")
    _check(path, lambda p: read_token_sequences(p))
