"""Read input files into the canonical events table: map columns, validate, quarantine bad rows.

Whole-file problems (missing or unreadable file, empty file, corrupt gzip, missing column, a
field that no row can be parsed as) raise :class:`DataFileError` / :class:`SchemaError` with a
one-line message that starts with the file path. Row-level problems (null or blank ids,
unparseable timestamps, timestamps outside ``schema.TIMESTAMP_WINDOW``, unknown behaviours, ragged
rows, ...) are dropped, counted by reason in the :class:`IngestReport` and, when asked, written
to a quarantine CSV with their raw values, the reason and the 1-based source line (parquet: row)
number. Row order is kept. A headerless file is read positionally even when its first row is
bad (that row is then quarantined like any other).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.formats import FormatSpec, get_format, normalize_name, parse_mapping
from seqanom_core.schema import (
    BEHAVIORS,
    EVENT_SCHEMA,
    SITE_FIELD,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMP_WINDOW,
    check_events,
)

logger = logging.getLogger(__name__)
# the per-file summary (rows read/kept/quarantined): a command that prints it silences this one
summary_logger = logging.getLogger(__name__ + ".summary")

def _log_summary(report: IngestReport) -> None:
    """Log a file's ingest summary: a warning when any row was rejected, else info."""
    (summary_logger.warning if sum(report.rejected.values()) else summary_logger.info)(
        "%s", report.summary())


#: Cell values read as missing (for ids this means "null id"); so is a blank (whitespace) cell.
NULL_VALUES: list[str] = ["", "NA", "N/A", "NULL", "null", "None", "NaN", "nan"]
#: Quarantine reason of a parsed timestamp outside the plausible window.
OUT_OF_RANGE = f"timestamp out of range ({TIMESTAMP_WINDOW})"

_HEAD_BYTES = 1 << 16
_BLOCK_SIZE = 1 << 22
_NUM_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_DATETIME_RE = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?P<f>\.\d+)?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}:?\d{2})?\s*$"
)
_MONTH_DAY_RE = r"^\s*(?P<mo>\d{1,2})\s*(?:-|/|\.|月)\s*(?P<d>\d{1,2})\s*日?\s*$"
_TIME_DESCRIPTIONS = {
    "unix_s": "Unix seconds",
    "unix_ms": "Unix milliseconds",
    "datetime": "a date-time (YYYY-MM-DD hh:mm:ss)",
    "date": "a date (YYYY-MM-DD)",
    "month_day": "a month-day date (M-D or M月D日)",
}
_NULL_CODE = -100
_UNKNOWN_CODE = -1
_SNIFF_ROWS = 50
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class IngestReport:
    """What one ingest read, kept and rejected (by reason)."""

    source: str
    format: str
    rows_read: int
    rows_kept: int
    rejected: dict[str, int]
    quarantine_path: str | None = None

    def summary(self) -> str:
        """Return a one-line human summary of the ingest."""
        name = Path(self.source).name
        text = f"{name}: {self.rows_read:,} rows read, {self.rows_kept:,} kept"
        total = sum(self.rejected.values())
        if total:
            parts = ", ".join(f"{n:,} {reason}" for reason, n in self.rejected.items())
            text += f", {total:,} quarantined ({parts})"
            if self.quarantine_path:
                text += f"; rejected rows in {self.quarantine_path}"
        return text

    def to_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        return asdict(self)


@dataclass
class TokenSequences:
    """Pre-tokenised sequences: one int64 array per kept input line."""

    ids: list[str]
    tokens: list[np.ndarray]

    def __len__(self) -> int:
        """Return the number of sequences."""
        return len(self.ids)


# --------------------------------------------------------------------------- files


def _open_checked(path: str | Path) -> tuple[Path, str]:
    """Check a path is a readable non-empty file; return it and its sniffed kind."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    if p.is_dir():
        raise DataFileError(f"{p}: is a directory, expected a file")
    if not p.is_file():
        raise DataFileError(f"{p}: is not a regular file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise DataFileError(f"{p}: cannot read ({err.strerror or err})") from None
    if not magic:
        raise DataFileError(f"{p}: file is empty")
    if magic[:2] == b"\x1f\x8b":
        kind = "gzip"
    elif magic == b"PAR1":
        kind = "parquet"
    else:
        kind = "text"
    expected = {".gz": "gzip", ".parquet": "parquet", ".pq": "parquet"}.get(p.suffix.lower())
    if expected and expected != kind:
        logger.warning("%s: extension says %s but the content is %s; reading it as %s", p, expected, kind, kind)
    return p, kind


def _read_head(p: Path, kind: str, size: int | None = _HEAD_BYTES) -> bytes:
    """Return the first ``size`` decompressed bytes of a text file (all if size is None)."""
    try:
        if kind == "gzip":
            with gzip.open(p, "rb") as f:
                return f.read(-1 if size is None else size)
        with open(p, "rb") as f:
            return f.read(-1 if size is None else size)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{p}: corrupt or truncated gzip data ({err})") from None


def _decode_head(p: Path, head: bytes, encodings: tuple[str, ...]) -> tuple[str, str]:
    """Decode the start of a file with the first encoding that fits; return (text, encoding)."""
    if len(head) >= _HEAD_BYTES and b"\n" in head:
        head = head[: head.rindex(b"\n")]
    has_nul = b"\x00" in head  # text has no NUL bytes, except in UTF-16/32
    for encoding in encodings:
        if has_nul and not codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
            continue
        try:
            return head.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    _refuse_binary(p, head)
    raise DataFileError(f"{p}: not valid text in {' or '.join(encodings)}")


def _refuse_binary(p: Path, head: bytes) -> None:
    """Raise a DataFileError when the start of a file has a NUL byte (binary, not 8-bit text)."""
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DataFileError(f"{p}: binary data, not a text file (a NUL byte at byte {nul})")


def _arrow_error(p: Path, err: Exception) -> DataFileError:
    """Turn a pyarrow read error into a one-line DataFileError."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "UTF8" in msg or "UTF-8" in msg:
        return DataFileError(f"{p}: not valid UTF-8 text ({msg})")
    if isinstance(err, OSError) or "gzip" in msg.lower() or "compress" in msg.lower():
        return DataFileError(f"{p}: cannot read, corrupt or truncated data ({msg})")
    return DataFileError(f"{p}: cannot parse ({msg})")


# --------------------------------------------------------------------------- layouts


def _match_header(spec: FormatSpec, names: list[str]) -> tuple[FormatSpec, dict[str, int]] | None:
    """Return the layout whose columns a header names best, with column -> field index."""
    norm = [normalize_name(n) for n in names]
    best: tuple[int, FormatSpec, dict[str, int]] | None = None
    for lay in spec.layouts():
        found: dict[str, int] = {}
        for col in lay.source_columns():
            accepted = lay.header_names(col)
            idx = next((i for i, n in enumerate(norm) if n in accepted), None)
            if idx is not None:
                found[col] = idx
        if all(c in found for c in lay.required_columns()):
            known = {n for c in (lay.columns or lay.source_columns()) for n in lay.header_names(c)}
            score = sum(n in known for n in norm)
            if best is None or score > best[0]:
                best = (score, lay, found)
    return None if best is None else (best[1], best[2])


def _header_problem(p: Path, spec: FormatSpec, names: list[str]) -> SchemaError:
    """Describe which canonical fields a header lacks."""
    norm = [normalize_name(n) for n in names]
    lay = spec
    missing = [
        f"'{fld}' (column '{col}')"
        for fld, col in lay.field_columns().items()
        if col in lay.required_columns() and not any(n in lay.header_names(col) for n in norm)
    ]
    return SchemaError(
        f"{p}: no column for field(s) {', '.join(missing)} of format '{spec.name}'; "
        f"columns found: {', '.join(names)}"
    )


def _row_parses(lay: FormatSpec, fields: list[str]) -> bool:
    """Return whether one positional row (as wide as the layout) looks like data of it.

    Data here means: user and item ids present, the timestamp parses and lies in the window.
    """
    row = dict(zip(lay.columns, fields, strict=True))
    for fld, col in lay.field_columns().items():
        if fld in ("user_id", "item_id") and row[col].strip() in NULL_VALUES:
            return False
    raw = {"timestamp": pa.chunked_array([pa.array([row[lay.timestamp]])])}
    if lay.time_offset_ms:
        raw["timestamp_offset"] = pa.chunked_array([pa.array([row[lay.time_offset_ms]])])
    ts = _parse_time(raw, lay)
    return bool(((ts >= TIMESTAMP_MIN) & (ts <= TIMESTAMP_MAX)).all())  # NaN: False


def _choose_csv_layout(
    p: Path, spec: FormatSpec, rows: list[list[str]]
) -> tuple[FormatSpec, dict[str, int] | None]:
    """Pick the layout of a CSV from its first rows: a header (name map) or positional (None).

    A first line that is not a header of the format is data (a bad first row is quarantined
    later like any other); the positional layout is then the one most of the first rows fit.
    """
    fields = rows[0]
    matched = _match_header(spec, fields)
    if matched is not None:
        return matched
    positional = [lay for lay in spec.layouts() if lay.columns]
    for lay in positional:
        if len(lay.columns) == len(fields) and _row_parses(lay, fields):
            return lay, None
    norm = {normalize_name(f) for f in fields}
    known = {n for lay in spec.layouts() for c in lay.source_columns() for n in lay.header_names(c)}
    if norm & known:
        raise _header_problem(p, spec, fields)
    if not positional:
        raise SchemaError(
            f"{p}: first line is not a '{spec.name}' header; expected a header naming "
            f"{', '.join(spec.required_columns())} (or give the column order with columns=); "
            f"found {len(fields)} field(s): {','.join(fields)[:200]!r}"
        )

    def fit(lay: FormatSpec) -> tuple[int, int]:
        """Count the sampled rows that parse as, and that have the width of, a layout."""
        wide = [r for r in rows if len(r) == len(lay.columns)]
        return sum(_row_parses(lay, r) for r in wide), len(wide)

    return max(positional, key=fit), None  # ties: the first layout


def _sniff_rows(lines: list[str], delimiter: str) -> list[list[str]]:
    """Split the first non-blank lines of a file into stripped fields (for choosing a layout)."""
    rows: list[list[str]] = []
    try:
        for row in csv.reader((ln for ln in lines if ln.strip()), delimiter=delimiter):
            rows.append([f.strip() for f in row])
            if len(rows) >= _SNIFF_ROWS:
                break
    except csv.Error:
        pass  # a malformed line ends the sample; the arrow reader reports it precisely
    return rows


# --------------------------------------------------------------------------- conversions


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (days since 1970-01-01, valid mask) for proleptic Gregorian dates."""
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    dim = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 1, 12) - 1] + (
        leap & (m == 2)
    )
    valid = (m >= 1) & (m <= 12) & (d >= 1) & (d <= dim)
    yy = y - (m <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468, valid


def _groups(m: pa.ChunkedArray | pa.Array, name: str, default: str = "0") -> np.ndarray:
    """Return one regex group as int64 (absent group: default; no match: 0)."""
    v = pc.fill_null(pc.struct_field(m, name), default)
    v = pc.if_else(pc.equal(v, ""), default, v)
    return np.asarray(pc.cast(v, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _parse_datetime_strict(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Parse date/date-time strings strictly; NaN where a value does not parse."""
    m = pc.extract_regex(arr, _DATETIME_RE)
    matched = np.asarray(pc.is_valid(m).to_numpy(zero_copy_only=False), dtype=bool)
    days, valid = _days_from_civil(_groups(m, "y", "1970"), _groups(m, "mo", "1"), _groups(m, "d", "1"))
    h, mi, s = _groups(m, "h"), _groups(m, "mi"), _groups(m, "s")
    valid &= matched & (h < 24) & (mi < 60) & (s < 60)
    frac = pc.fill_null(pc.struct_field(m, "f"), "")
    frac = pc.cast(pc.binary_join_element_wise("0", frac, ""), pa.float64())
    tz = pc.dictionary_encode(pc.fill_null(pc.struct_field(m, "tz"), ""))
    tz = tz.combine_chunks() if isinstance(tz, pa.ChunkedArray) else tz
    offsets = np.array(
        [_tz_seconds(v) for v in tz.dictionary.to_pylist()] or [0], dtype=np.float64
    )[tz.indices.to_numpy(zero_copy_only=False)] if len(tz) else np.zeros(0)
    out = days * 86400.0 + h * 3600.0 + mi * 60.0 + s + np.asarray(frac.to_numpy(zero_copy_only=False))
    out -= offsets
    out[~valid] = np.nan
    return out


def _tz_seconds(tz: str) -> float:
    """Return a UTC offset written +HH:MM / +HHMM / Z / UTC in seconds."""
    if tz and tz[0] in "+-":
        digits = tz[1:].replace(":", "")
        sign = -1.0 if tz[0] == "-" else 1.0
        return sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return 0.0


def _parse_month_day(values: pa.Array, year: int) -> np.ndarray:
    """Parse month-day strings (``6-4``, ``6月4日``) as UTC midnight of ``year``."""
    m = pc.extract_regex(values, _MONTH_DAY_RE)
    matched = np.asarray(pc.is_valid(m).to_numpy(zero_copy_only=False), dtype=bool)
    mo, d = _groups(m, "mo", "1"), _groups(m, "d", "1")
    days, valid = _days_from_civil(np.full(len(mo), year, dtype=np.int64), mo, d)
    out = days * 86400.0
    out[~(valid & matched)] = np.nan
    return out


def _by_dictionary(
    arr: pa.ChunkedArray, fn: Callable[[pa.Array], np.ndarray], null_value: float, dtype: type
) -> np.ndarray:
    """Apply ``fn`` to each chunk's distinct values and spread the result to rows."""
    parts = []
    for chunk in arr.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        values = chunk.dictionary
        if not pa.types.is_string(values.type):
            values = values.cast(pa.string())
        lookup: np.ndarray = np.append(np.asarray(fn(values), dtype=dtype), np.asarray(null_value, dtype=dtype))
        idx = pc.fill_null(chunk.indices, len(values)).to_numpy(zero_copy_only=False)
        parts.append(lookup[idx])
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _to_seconds(col: pa.ChunkedArray, kind: str, year: int | None, scale: float = 1.0) -> np.ndarray:
    """Convert a timestamp column to float64 Unix seconds; NaN where a value does not parse."""
    t = col.type
    if pa.types.is_timestamp(t):
        us = pc.cast(pc.cast(col, pa.timestamp("us", tz=t.tz)), pa.int64())
        return pc.divide(pc.cast(us, pa.float64()), 1e6).to_numpy()
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(col, pa.date32()), pa.int32())
        return pc.multiply(pc.cast(days, pa.float64()), 86400.0).to_numpy()
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        out = pc.cast(col, pa.float64()).to_numpy() * (0.001 if kind == "unix_ms" else 1.0) * scale
    elif kind in ("date", "month_day") or pa.types.is_dictionary(t):
        if kind == "month_day":
            fn: Callable[[pa.Array], np.ndarray] = lambda v: _parse_month_day(v, year or 1970)  # noqa: E731
        elif kind in ("date", "datetime"):
            fn = _parse_datetime_strict
        else:
            fn = lambda v: _to_seconds(pa.chunked_array([v]), kind, year, scale)  # noqa: E731
        return _by_dictionary(col, fn, np.nan, np.float64)
    elif kind == "datetime":
        try:
            ts = pc.cast(pc.utf8_rtrim(col, characters=" UTCZ"), pa.timestamp("us"))
            us = pc.cast(pc.cast(ts, pa.int64()), pa.float64())
            return pc.divide(us, 1e6).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _parse_datetime_strict(col)
    else:
        if not pa.types.is_string(t):
            col = pc.cast(col, pa.string())
        try:
            vals = pc.cast(col, pa.float64())
        except pa.ArrowInvalid:
            col = pc.utf8_trim_whitespace(col)  # ' 1511544070 ' reads like '1511544070'
            ok = pc.match_substring_regex(col, _NUM_RE)
            vals = pc.cast(pc.if_else(ok, col, pa.scalar(None, pa.string())), pa.float64())
        out = vals.to_numpy() * ((0.001 if kind == "unix_ms" else 1.0) * scale)
    out = np.asarray(out, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _parse_time(raw: dict[str, pa.ChunkedArray], lay: FormatSpec) -> np.ndarray:
    """Return the canonical timestamp (float64 seconds, NaN if unparseable) of every row."""
    ts = _to_seconds(raw["timestamp"], lay.time_kind, lay.year)
    if "timestamp_offset" in raw:
        ts = ts + _to_seconds(raw["timestamp_offset"], "unix_ms", None)
    return ts


def _behavior_codes(col: pa.ChunkedArray, lay: FormatSpec) -> np.ndarray:
    """Map a behaviour column to codes: 0-3 known, -1 unknown, -2-k dropped value k, -100 null."""
    known = lay.behavior_values()
    dropped = {v.strip().lower(): i for i, v in enumerate(lay.dropped_behaviors)}

    def lookup(values: pa.Array) -> np.ndarray:
        """Map distinct behaviour values to codes."""
        out = []
        for v in values.to_pylist():
            key = None if v is None else v.strip().lower()
            if key is None or key in NULL_VALUES:
                out.append(_NULL_CODE)
            elif key in known:
                out.append(known[key])
            elif key in dropped:
                out.append(-2 - dropped[key])
            else:
                out.append(_UNKNOWN_CODE)
        return np.array(out, dtype=np.int16)

    return _by_dictionary(col, lookup, _NULL_CODE, np.int16)


def _null_mask(col: pa.ChunkedArray) -> np.ndarray | None:
    """Return the null mask of a column, or None when it has no nulls."""
    if col.null_count == 0:
        return None
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _blank(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return where string values are empty or only whitespace (null: True)."""
    blank = pc.or_(pc.utf8_is_space(values), pc.equal(pc.binary_length(values), 0))
    return np.asarray(pc.fill_null(blank, True).to_numpy(zero_copy_only=False), dtype=bool)


def _missing_mask(col: pa.ChunkedArray) -> np.ndarray | None:
    """Return where a column is null or blank (empty or whitespace only), or None when nowhere."""
    if pa.types.is_dictionary(col.type):
        mask = _by_dictionary(col, _blank, True, np.bool_)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        mask = _blank(col)
    else:
        return _null_mask(col)
    return mask if mask.any() else None


def _describe_time(seconds: float) -> str:
    """Return Unix seconds as a UTC date-time, or as a number when no calendar date fits."""
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        year = 1970 + seconds / 31_556_952
        return f"{seconds:.6g} s from 1970, about year {year:.0f}" if abs(year) < 1e9 else f"{seconds:.6g} s from 1970"


def _unit_hint(ts: np.ndarray, kind: str) -> str:
    """Suggest the other Unix unit when most out-of-range values fit the window in it (else '')."""
    other = {"unix_s": ("unix_ms", 1e-3, "milliseconds"), "unix_ms": ("unix_s", 1e3, "seconds")}
    if kind not in other or not len(ts):
        return ""
    name, factor, words = other[kind]
    scaled = ts * factor
    if ((scaled >= TIMESTAMP_MIN) & (scaled <= TIMESTAMP_MAX)).mean() <= 0.5:
        return ""
    return f"; the values look like Unix {words} (time={name} in a generic mapping)"


def _example(col: pa.ChunkedArray, mask: np.ndarray) -> str:
    """Return the first raw value where mask is set, as a string."""
    i = int(np.flatnonzero(mask)[0])
    v = col[i].as_py()
    return str(v)


def _convert(
    p: Path, raw: dict[str, pa.ChunkedArray], lay: FormatSpec, n: int
) -> tuple[dict[str, pa.ChunkedArray | pa.Array], list[tuple[str, np.ndarray]]]:
    """Convert raw source columns to canonical columns; return them and per-reason masks."""
    checks: list[tuple[str, np.ndarray]] = []
    nulls = {fld: _missing_mask(col) for fld, col in raw.items()}
    empty = np.logical_and.reduce(
        [m if m is not None else np.zeros(n, dtype=bool) for m in nulls.values()]
    ) if n else np.zeros(0, dtype=bool)
    filled = ~empty
    if empty.any():
        checks.append(("empty row", empty))
    out: dict[str, pa.ChunkedArray | pa.Array] = {}
    cols = lay.field_columns()
    for fld in ("user_id", "item_id", "category_id", "site"):
        if fld not in raw:
            continue
        col = raw[fld]
        if not pa.types.is_string(col.type):
            try:
                col = pc.cast(col, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise SchemaError(
                    f"{p}: field '{fld}': column '{cols[fld]}' of type {col.type} cannot be read as ids"
                ) from None
        out[fld] = col
        mask = nulls[fld]
        if mask is not None:
            if filled.any() and mask[filled].all():
                raise SchemaError(f"{p}: field '{fld}': every row is empty (column '{cols[fld]}')")
            checks.append((f"null {fld}", mask))
    if "category_id" not in out:
        out["category_id"] = out["item_id"]
    if "behavior" in raw:
        codes = _behavior_codes(raw["behavior"], lay)
        null_b = codes == _NULL_CODE
        unknown = codes == _UNKNOWN_CODE
        if null_b.any():
            checks.append(("null behavior", null_b))
        present = filled & ~null_b
        if present.any() and unknown[present].all():
            known = ", ".join(dict.fromkeys(v for v, _ in lay.behaviors))
            raise SchemaError(
                f"{p}: field 'behavior': no row has a known behaviour value "
                f"(e.g. {_example(raw['behavior'], unknown)!r}); known values: {known}"
            )
        if unknown.any():
            checks.append(("unknown behaviour", unknown))
        for k, value in enumerate(lay.dropped_behaviors):
            mask = codes == -2 - k
            if mask.any():
                checks.append((f"{value} event (not modelled)", mask))
        out["behavior"] = pa.array(np.where(codes >= 0, codes, 0).astype(np.int8), pa.int8())
    else:
        code = BEHAVIORS.index(lay.constant_behavior)
        out["behavior"] = pa.array(np.full(n, code, dtype=np.int8), pa.int8())
    ts = _parse_time(raw, lay)
    null_t = nulls["timestamp"]
    if "timestamp_offset" in nulls and nulls["timestamp_offset"] is not None:
        null_t = nulls["timestamp_offset"] if null_t is None else (null_t | nulls["timestamp_offset"])
    bad_t = np.isnan(ts)
    if null_t is not None:
        bad_t &= ~null_t
        if filled.any() and null_t[filled].all():
            raise SchemaError(f"{p}: field 'timestamp': every row is empty (column '{lay.timestamp}')")
        checks.append(("null timestamp", null_t))
    present = filled if null_t is None else filled & ~null_t
    far = ~np.isnan(ts) & ((ts < TIMESTAMP_MIN) | (ts > TIMESTAMP_MAX))
    if present.any() and (bad_t | far)[present].all():
        if not far[present].any():
            ex = _example(raw["timestamp"], bad_t)
            raise SchemaError(
                f"{p}: field 'timestamp': no row parses as {_TIME_DESCRIPTIONS[lay.time_kind]} "
                f"(e.g. {ex!r}, column '{lay.timestamp}')"
            )
        i = int(np.flatnonzero(far & present)[0])
        raise SchemaError(
            f"{p}: field 'timestamp': no row has a time in {TIMESTAMP_WINDOW} "
            f"(e.g. {str(raw['timestamp'][i].as_py())!r} is {_describe_time(float(ts[i]))}, "
            f"column '{lay.timestamp}' read as {_TIME_DESCRIPTIONS[lay.time_kind]})"
            + _unit_hint(ts[far], lay.time_kind)
        )
    if bad_t.any():
        checks.append(("unparseable timestamp", bad_t))
    if far.any():
        checks.append((OUT_OF_RANGE, far))
        hint = _unit_hint(ts[far], lay.time_kind)
        if hint:
            logger.warning("%s: %d timestamp(s) outside %s%s", p, int(far.sum()), TIMESTAMP_WINDOW, hint)
    out["timestamp"] = pa.array(ts, pa.float64())
    return out, checks


# --------------------------------------------------------------------------- readers


def _read_csv_raw(
    p: Path, kind: str, spec: FormatSpec, want_lines: bool
) -> tuple[FormatSpec, dict[str, pa.ChunkedArray], dict[str, str], list[tuple[int | None, str]], int, str]:
    """Read the needed columns of a CSV as strings; return layout, columns, ragged rows, first line."""
    head = _read_head(p, kind)
    if not head.strip():
        raise DataFileError(f"{p}: file is empty")
    text, encoding = _decode_head(p, head, spec.encodings)
    lines = text.splitlines()
    lead = next(i for i, line in enumerate(lines) if line.strip())
    first = lines[lead].lstrip("\ufeff")
    fields = [f.strip() for f in next(csv.reader([first], delimiter=spec.delimiter))]
    rows = [fields, *_sniff_rows(lines[lead + 1 :], spec.delimiter)]
    lay, header = _choose_csv_layout(p, spec, rows)
    if header is not None:
        names = [f"{f}.{i}" if fields.index(f) != i else f for i, f in enumerate(fields)]
        col_of = {col: names[i] for col, i in header.items()}
        skip = lead + 1
    else:
        names = list(lay.columns)
        col_of = {c: c for c in lay.source_columns() if c in lay.columns}
        skip = lead
    fields_of = {fld: col_of[col] for fld, col in lay.field_columns().items() if col in col_of}
    dict_type = pa.dictionary(pa.int32(), pa.string())
    types: dict[str, pa.DataType] = {}
    for fld, name in fields_of.items():
        as_dict = fld == "behavior" or (fld == "timestamp" and lay.time_kind in ("date", "month_day"))
        types[name] = dict_type if as_dict else pa.string()

    def read(use_threads: bool) -> tuple[pa.Table, list[tuple[int | None, str]]]:
        """Run the arrow CSV reader once."""
        ragged: list[tuple[int | None, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            """Collect a ragged row and skip it."""
            ragged.append((row.number, row.text))
            return "skip"

        stream = pa.input_stream(str(p), compression="gzip" if kind == "gzip" else None)
        try:
            table = pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    use_threads=use_threads,
                    block_size=_BLOCK_SIZE,
                    skip_rows=skip,
                    column_names=names,
                    encoding="utf8" if encoding.replace("-", "").lower() == "utf8" else encoding,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=lay.delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(types),
                    column_types=types,
                    strings_can_be_null=True,
                    null_values=NULL_VALUES,
                    quoted_strings_can_be_null=True,
                ),
            )
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
            raise _arrow_error(p, err) from None
        finally:
            stream.close()
        return table, ragged

    table, ragged = read(True)
    if want_lines and ragged and any(num is None for num, _ in ragged):
        table, ragged = read(False)  # only the serial reader knows ragged rows' line numbers
    if table.num_rows == 0 and ragged:
        num, row_text = ragged[0]
        if num is None:  # the threaded reader does not number rows; find it in the file's start
            num = next((i + 1 for i, line in enumerate(lines) if line == row_text), None)
        shape = "the header" if header is not None else f"format '{lay.name}' ({','.join(lay.columns)})"
        raise SchemaError(
            f"{p}: no row has the {len(names)} fields of {shape}; e.g. "
            + (f"line {num}: " if num is not None else "")
            + f"{row_text[:200]!r}"
        )
    raw = {fld: table.column(name) for fld, name in fields_of.items()}
    return lay, raw, fields_of, ragged, skip + 1, encoding


def _read_parquet_raw(
    p: Path, spec: FormatSpec
) -> tuple[FormatSpec, dict[str, pa.ChunkedArray], dict[str, str]]:
    """Read the needed columns of a parquet file, mapped by column names."""
    try:
        pf = pq.ParquetFile(p)
        names = pf.schema_arrow.names
    except (pa.ArrowInvalid, OSError) as err:
        raise _arrow_error(p, err) from None
    matched = _match_header(spec, names)
    if matched is None:
        raise _header_problem(p, spec, names)
    lay, header = matched
    try:
        table = pf.read(columns=list(dict.fromkeys(names[i] for i in header.values())))
    except (pa.ArrowInvalid, OSError) as err:
        raise _arrow_error(p, err) from None
    raw, fields_of = {}, {}
    for fld, col in lay.field_columns().items():
        if col in header:
            fields_of[fld] = names[header[col]]
            c = table.column(names[header[col]])
            if pa.types.is_large_string(c.type) or (fld == "behavior" and not pa.types.is_dictionary(c.type)):
                c = pc.cast(c, pa.string())
            raw[fld] = c
    return lay, raw, fields_of


def read_events(
    path: str | Path,
    fmt: str | FormatSpec,
    *,
    quarantine_path: str | Path | None = None,
    site: str | None = None,
) -> tuple[pa.Table, IngestReport]:
    """Read a CSV/CSV.gz/parquet file in format ``fmt`` (a name, a mapping string or a spec) into canonical events."""
    if isinstance(fmt, FormatSpec):
        spec = fmt
    elif "=" in fmt:
        spec = parse_mapping(fmt)
    else:
        spec = get_format(fmt)
    if site is not None and not str(site).strip():
        raise ConfigError("site must be a non-empty string")
    p, kind = _open_checked(path)
    ragged: list[tuple[int | None, str]] = []
    first_line = 1
    if kind == "parquet":
        lay, raw, fields_of = _read_parquet_raw(p, spec)
    else:
        lay, raw, fields_of, ragged, first_line, _ = _read_csv_raw(p, kind, spec, quarantine_path is not None)
    if site is not None and "site" in raw:
        logger.warning("%s: site=%r replaces the file's '%s' column", p, site, lay.site)
        del raw["site"]
    n = len(raw["timestamp"])
    out, checks = _convert(p, raw, lay, n)
    reason_of = np.zeros(n, dtype=np.int16)
    for i in range(len(checks) - 1, -1, -1):  # earlier checks take precedence
        reason_of[checks[i][1]] = i + 1
    counts = np.bincount(reason_of, minlength=len(checks) + 1)
    rejected = {"ragged row": len(ragged)} if ragged else {}
    rejected.update({name: int(counts[i + 1]) for i, (name, _) in enumerate(checks) if counts[i + 1]})
    keep = reason_of == 0
    with_site = "site" in out or site is not None
    schema = EVENT_SCHEMA.append(SITE_FIELD) if with_site else EVENT_SCHEMA
    names = [f.name for f in schema]
    arrays = [out[c] for c in names if c in out]
    table = pa.Table.from_arrays(arrays, names=[c for c in names if c in out])
    if not keep.all():
        table = table.filter(pa.array(keep))
    if site is not None:
        table = table.append_column("site", pa.repeat(pa.scalar(str(site)), table.num_rows))
    table = pa.Table.from_arrays(table.select(names).columns, schema=schema)
    report = IngestReport(
        source=str(p),
        format=spec.name,
        rows_read=n + len(ragged),
        rows_kept=table.num_rows,
        rejected=dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        quarantine_path=None if quarantine_path is None else str(quarantine_path),
    )
    if quarantine_path is not None:
        rows = np.flatnonzero(~keep)
        lines: np.ndarray | None
        if kind == "parquet":
            lines = rows + 1
        else:
            lines = _line_numbers(rows, ragged, first_line, n)
        labels = [name for name, _ in checks]
        _write_quarantine(Path(quarantine_path), raw, fields_of, rows, reason_of[rows] - 1, labels, lines, ragged)
    if n == 0 and not ragged:
        logger.warning("%s: no data rows", p)
    _log_summary(report)
    return table, report


def read_nonempty_events(
    path: str | Path, fmt: str | FormatSpec, *, quarantine_path: str | Path | None = None
) -> tuple[pa.Table, IngestReport]:
    """``read_events`` for a job that needs data: a file with no valid row (header only, or
    every row quarantined) is a one-line error with the ingest summary, not an empty table."""
    events, report = read_events(path, fmt, quarantine_path=quarantine_path)
    if events.num_rows == 0:
        raise ConfigError(f"{path}: no valid rows ({report.summary()})")
    return events, report


def _line_numbers(
    rows: np.ndarray, ragged: list[tuple[int | None, str]], first_line: int, n: int
) -> np.ndarray | None:
    """Return 1-based source line numbers of table rows (None when ragged lines are unknown)."""
    ragged_lines = np.array([num for num, _ in ragged if num is not None], dtype=np.int64)
    if len(ragged_lines) != len(ragged):
        return None
    all_lines = np.arange(first_line, first_line + n + len(ragged), dtype=np.int64)
    data_lines = np.setdiff1d(all_lines, ragged_lines, assume_unique=True)
    return data_lines[rows]


def _write_csv(table: pa.Table, p: Path) -> None:
    """Write a table as CSV (gzip when the name ends in .gz) atomically; quote only when needed."""
    tmp = p.with_name(p.name + ".tmp")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(table.column_names)
    header = buf.getvalue().encode("utf-8")

    def attempt(quoting: str) -> None:
        """Write the whole file with one quoting style."""
        gz = p.name.lower().endswith(".gz")
        with pa.CompressedOutputStream(str(tmp), "gzip") if gz else pa.OSFile(str(tmp), "wb") as out:
            out.write(header)
            options = pacsv.WriteOptions(include_header=False, quoting_style=quoting)
            pacsv.write_csv(table, out, write_options=options)

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            attempt("none")
        except pa.ArrowInvalid:  # a value holds a delimiter, quote or newline
            attempt("needed")
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataFileError(f"{p}: cannot write ({err})") from None


def _write_quarantine(
    p: Path,
    raw: dict[str, pa.ChunkedArray],
    fields_of: dict[str, str],
    rows: np.ndarray,
    reasons: np.ndarray,
    labels: list[str],
    lines: np.ndarray | None,
    ragged: list[tuple[int | None, str]],
) -> None:
    """Write rejected rows (raw values, reason, source line) to a quarantine CSV."""
    sources = list(dict.fromkeys(fields_of[f] for f in raw))
    by_source = {fields_of[f]: raw[f] for f in raw}
    idx = pa.array(rows, pa.int64())
    data: dict[str, pa.Array] = {
        "line": pa.array(lines if lines is not None else np.full(len(rows), None), pa.int64()),
        "reason": pa.DictionaryArray.from_arrays(
            pa.array(reasons.astype(np.int32)), pa.array(labels or [""], pa.string())
        ).cast(pa.string()),
    }
    for name in sources:
        col = by_source[name].take(idx)
        data[name] = pc.cast(col, pa.string()).combine_chunks() if len(rows) else pa.array([], pa.string())
    data["raw"] = pa.nulls(len(rows), pa.string())
    table = pa.table(data)
    if ragged:
        extra = {
            "line": pa.array([num for num, _ in ragged], pa.int64()),
            "reason": pa.array(["ragged row"] * len(ragged), pa.string()),
            **{name: pa.nulls(len(ragged), pa.string()) for name in sources},
            "raw": pa.array([text for _, text in ragged], pa.string()),
        }
        table = pa.concat_tables([table, pa.table(extra)])
        if table.column("line").null_count == 0:
            table = table.sort_by("line")
    _write_csv(table, p)
    logger.info("%s: %d rejected rows written", p, table.num_rows)


# --------------------------------------------------------------------------- writers


def write_events(table: pa.Table, path: str | Path) -> None:
    """Write canonical events (behaviour as names) to .csv, .csv.gz or .parquet, by extension."""
    p = Path(path)
    table = check_events(table, str(p))
    for name in table.column_names:
        if table.column(name).null_count:
            raise SchemaError(f"{p}: column '{name}' has {table.column(name).null_count} null value(s)")
    beh = table.column("behavior")
    if len(beh) and (pc.min(beh).as_py() < 0 or pc.max(beh).as_py() >= len(BEHAVIORS)):
        raise SchemaError(f"{p}: column 'behavior' has codes outside 0..{len(BEHAVIORS) - 1}")
    names = pc.take(pa.array(BEHAVIORS, pa.string()), pc.cast(beh, pa.int32()))
    table = table.set_column(table.column_names.index("behavior"), "behavior", names)
    lower = p.name.lower()
    if lower.endswith((".parquet", ".pq")):
        tmp = p.with_name(p.name + ".tmp")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, str(tmp))
            os.replace(tmp, p)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DataFileError(f"{p}: cannot write ({err})") from None
    elif lower.endswith((".csv", ".csv.gz")):
        _write_csv(table, p)
    else:
        raise DataFileError(f"{p}: unknown output extension; use .csv, .csv.gz or .parquet")
    logger.info("%s: wrote %d events", p, table.num_rows)


# --------------------------------------------------------------------------- tokens


def read_token_sequences(
    path: str | Path, *, quarantine_path: str | Path | None = None
) -> tuple[TokenSequences, IngestReport]:
    """Read one sequence of space-separated non-negative integer tokens per line (id = 0-based line)."""
    p, kind = _open_checked(path)
    if kind == "parquet":
        raise DataFileError(f"{p}: token sequences must be a text file (.txt or .txt.gz), not parquet")
    data = _read_head(p, kind, size=None)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    if not data.strip():
        raise DataFileError(f"{p}: file is empty")
    _refuse_binary(p, data[:_HEAD_BYTES])
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    offsets = np.concatenate([[0], ends, [] if data.endswith(b"\n") else [len(data)]]).astype(np.int64)
    n = len(offsets) - 1
    lines = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        raise DataFileError(f"{p}: not valid UTF-8 text") from None
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))
    flat = pc.list_flatten(lists)
    parent = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    nonempty = np.asarray(pc.not_equal(flat, "").to_numpy(zero_copy_only=False), dtype=bool)
    flat, parent = flat.filter(pa.array(nonempty)), parent[nonempty]
    ok = np.asarray(pc.match_substring_regex(flat, r"^\d{1,18}$").to_numpy(zero_copy_only=False), dtype=bool)
    digits = np.asarray(pc.match_substring_regex(flat, r"^\d+$").to_numpy(zero_copy_only=False), dtype=bool)
    neg = np.asarray(pc.match_substring_regex(flat, r"^-\d+$").to_numpy(zero_copy_only=False), dtype=bool)
    labels = ["non-integer token", "negative token", "token too large", "empty line"]
    code = np.zeros(n, dtype=np.int16)
    for i, mask in reversed(list(enumerate([~digits & ~neg, neg, digits & ~ok]))):
        code[parent[mask]] = i + 1
    code[np.bincount(parent, minlength=n) == 0] = len(labels)  # blank or whitespace-only line
    keep = code == 0
    if n and not keep.any():
        bad = int(np.flatnonzero(code != len(labels))[0]) if (code != len(labels)).any() else 0
        raise SchemaError(
            f"{p}: no line is a sequence of non-negative integer tokens "
            f"(e.g. line {bad + 1}: {lines[bad].as_py().rstrip()[:80]!r})"
        )
    tok_keep = keep[parent]
    values = pc.cast(flat.filter(pa.array(tok_keep)), pa.int64()).to_numpy(zero_copy_only=False)
    counts = np.bincount(parent[tok_keep], minlength=n)[keep]
    tokens = np.split(np.asarray(values, dtype=np.int64), np.cumsum(counts)[:-1]) if len(counts) else []
    kept_ids = np.flatnonzero(keep)
    counts_all = np.bincount(code, minlength=len(labels) + 1)
    rejected = {labels[i]: int(counts_all[i + 1]) for i in range(len(labels)) if counts_all[i + 1]}
    seqs = TokenSequences(ids=kept_ids.astype(str).tolist(), tokens=list(tokens))
    report = IngestReport(
        source=str(p),
        format="tokens",
        rows_read=n,
        rows_kept=len(kept_ids),
        rejected=dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        quarantine_path=None if quarantine_path is None else str(quarantine_path),
    )
    if quarantine_path is not None:
        bad_rows = np.flatnonzero(~keep)
        idx = pa.array(bad_rows, pa.int64())
        table = pa.table(
            {
                "line": pa.array(bad_rows + 1, pa.int64()),
                "id": pa.array(bad_rows.astype(str), pa.string()),
                "reason": pa.DictionaryArray.from_arrays(
                    pa.array((code[bad_rows] - 1).astype(np.int32)), pa.array(labels)
                ).cast(pa.string()),
                "raw": pc.cast(pc.utf8_rtrim(lines.take(idx), characters="\r\n"), pa.string()),
            }
        )
        _write_csv(table, Path(quarantine_path))
    _log_summary(report)
    return seqs, report
