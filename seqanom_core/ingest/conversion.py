"""Raw source columns to the canonical event columns, with a mask of rejected rows per reason."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.errors import SchemaError
from seqanom_core.formats import FormatSpec
from seqanom_core.ingest.timestamps import _by_dictionary, _describe_time, _parse_time, _unit_hint
from seqanom_core.schema import (
    BEHAVIORS,
    EVENT_SCHEMA,
    SITE_FIELD,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMP_WINDOW,
)

logger = logging.getLogger("seqanom_core.ingest")  # one logger name for the whole package

#: Cell values read as missing (for ids this means "null id"); so is a blank (whitespace) cell.
NULL_VALUES: list[str] = ["", "NA", "N/A", "NULL", "null", "None", "NaN", "nan"]
#: Quarantine reason of a parsed timestamp outside the plausible window.
OUT_OF_RANGE = f"timestamp out of range ({TIMESTAMP_WINDOW})"
_TIME_DESCRIPTIONS = {
    "unix_s": "Unix seconds",
    "unix_ms": "Unix milliseconds",
    "datetime": "a date-time (YYYY-MM-DD hh:mm:ss)",
    "date": "a date (YYYY-MM-DD)",
    "month_day": "a month-day date (M-D or M月D日)",
}
_NULL_CODE = -100
_UNKNOWN_CODE = -1


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


def _blank_slow(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return where string values are empty or only whitespace (null: True), by Arrow kernels."""
    blank = pc.or_(pc.utf8_is_space(values), pc.equal(pc.binary_length(values), 0))
    return np.asarray(pc.fill_null(blank, True).to_numpy(zero_copy_only=False), dtype=bool)


def _blank_chunk(arr: pa.Array) -> np.ndarray:
    """``_blank_slow`` of one string chunk, from its offsets and first bytes: only values whose
    first byte may start whitespace (ASCII control or space, or a multi-byte character) go
    through ``utf8_is_space`` -- almost none in real data, so this is a few numpy passes."""
    n = len(arr)
    bufs = arr.buffers()
    if n == 0 or len(bufs) != 3 or bufs[1] is None:
        return _blank_slow(arr)
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offs = np.frombuffer(bufs[1], dtype=width, count=arr.offset + n + 1)[arr.offset:]
    starts, lengths = offs[:-1], np.diff(offs)
    blank = lengths == 0
    if bufs[2] is not None and not blank.all():
        data = np.frombuffer(bufs[2], dtype=np.uint8)
        first = data[np.minimum(starts, len(data) - 1)]  # an empty value's is never used
        maybe = np.flatnonzero(~blank & ((first <= 32) | (first >= 0x80)))
        if len(maybe):
            blank[maybe] = _blank_slow(arr.take(pa.array(maybe)))
    if arr.null_count:
        blank |= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return blank


def _blank(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return where string values are empty or only whitespace (null: True)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    if not chunks:
        return np.zeros(0, dtype=bool)
    return np.concatenate([_blank_chunk(c) for c in chunks])


def _missing_mask(col: pa.ChunkedArray) -> np.ndarray | None:
    """Return where a column is null or blank (empty or whitespace only), or None when nowhere."""
    if pa.types.is_dictionary(col.type):
        mask = _by_dictionary(col, _blank, True, np.bool_)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        mask = _blank(col)
    else:
        return _null_mask(col)
    return mask if mask.any() else None


def _example(col: pa.ChunkedArray, mask: np.ndarray) -> str:
    """Return the first raw value where mask is set, as a string."""
    i = int(np.flatnonzero(mask)[0])
    v = col[i].as_py()
    return str(v)


def _guarded(p: Path, fld: str, name: str, col: pa.ChunkedArray,
             convert: Callable[[], np.ndarray]) -> np.ndarray:
    """``convert()``, with an Arrow failure (a column type that has no conversion) as a one-line
    ``SchemaError`` naming the file, the field and the column."""
    try:
        return convert()
    except pa.ArrowException as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SchemaError(f"{p}: field '{fld}': column '{name}' of type {col.type} cannot be "
                          f"read as {'behaviour values' if fld == 'behavior' else 'times'} "
                          f"({first})") from None


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
        codes = _guarded(p, "behavior", cols["behavior"], raw["behavior"],
                         lambda: _behavior_codes(raw["behavior"], lay))
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
    ts = _guarded(p, "timestamp", lay.timestamp, raw["timestamp"], lambda: _parse_time(raw, lay))
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


def _validated(
    p: Path, raw: dict[str, pa.ChunkedArray], lay: FormatSpec, n: int, site: str | None
) -> tuple[pa.Table, np.ndarray, list[tuple[str, np.ndarray]]]:
    """Convert and check raw columns: the kept rows as a canonical events table (with ``site``
    when given or read), each row's reason (0 kept, else 1 + index into ``checks``), the checks."""
    out, checks = _convert(p, raw, lay, n)
    reason_of = np.zeros(n, dtype=np.int16)
    for i in range(len(checks) - 1, -1, -1):  # earlier checks take precedence
        reason_of[checks[i][1]] = i + 1
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
    return table, reason_of, checks
