"""Choosing a file's layout: matching a header to a format's columns, or picking the positional
layout the first rows fit."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa

from seqanom_core.errors import SchemaError
from seqanom_core.formats import FormatSpec, normalize_name
from seqanom_core.ingest.conversion import NULL_VALUES
from seqanom_core.ingest.timestamps import _parse_time
from seqanom_core.schema import TIMESTAMP_MAX, TIMESTAMP_MIN

_SNIFF_ROWS = 50


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
