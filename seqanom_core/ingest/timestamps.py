"""Timestamp columns to float64 Unix seconds (Unix s/ms, date-times, dates, month-days), and
descriptions of out-of-range times for error messages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.formats import FormatSpec
from seqanom_core.schema import TIMESTAMP_MAX, TIMESTAMP_MIN

_NUM_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_DATETIME_RE = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?P<f>\.\d+)?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}:?\d{2})?\s*$"
)
_MONTH_DAY_RE = r"^\s*(?P<mo>\d{1,2})\s*(?:-|/|\.|月)\s*(?P<d>\d{1,2})\s*日?\s*$"


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
        # ticks since the epoch in UTC (time zone or not), in the column's unit: nanoseconds are
        # not cast to microseconds first, which refuses any value with a nanosecond part
        ticks = pc.cast(pc.cast(col, pa.int64()), pa.float64(), safe=False)
        per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        return pc.divide(ticks, per_second).to_numpy()
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(col, pa.date32()), pa.int32())
        return pc.multiply(pc.cast(days, pa.float64()), 86400.0).to_numpy()
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        # safe=False: an integer above 2**53 is rounded (it is far out of range: quarantined)
        out = (pc.cast(col, pa.float64(), safe=False).to_numpy()
               * (0.001 if kind == "unix_ms" else 1.0) * scale)
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
        try:  # integer text first: Arrow parses it about 3x faster than float text
            vals = pc.cast(pc.cast(col, pa.int64()), pa.float64())
            if kind != "unix_ms" and scale == 1.0 and vals.null_count == 0:
                return np.asarray(vals.to_numpy(), dtype=np.float64)  # finite, as is
        except pa.ArrowInvalid:
            vals = None
        try:
            vals = pc.cast(col, pa.float64()) if vals is None else vals
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
