"""Reading event files (CSV, CSV.gz, parquet) into the canonical events table and its report."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.formats import FormatSpec, get_format, parse_mapping
from seqanom_core.ingest.conversion import NULL_VALUES, _validated
from seqanom_core.ingest.files import _arrow_error, _decode_head, _open_checked, _read_head
from seqanom_core.ingest.layouts import (
    _choose_csv_layout,
    _header_problem,
    _match_header,
    _sniff_rows,
)
from seqanom_core.ingest.memory_limit import (
    PARQUET_ROW_BYTES,
    PARQUET_TEXT_FACTOR,
    TEXT_FACTOR,
    check_memory,
    check_text_file,
)
from seqanom_core.ingest.quarantine import _line_numbers, _write_quarantine
from seqanom_core.ingest.report import IngestReport, _log_summary

logger = logging.getLogger("seqanom_core.ingest")  # one logger name for the whole package

_BLOCK_SIZE = 1 << 22


class _NotThisEncoding(Exception):
    """The file's start decoded in an encoding that a later part of it is not valid in."""

    def __init__(self, error: DataFileError) -> None:
        super().__init__(str(error))
        self.error = error


_CsvRaw = tuple[FormatSpec, dict[str, pa.ChunkedArray], dict[str, str],
                list[tuple[int | None, str]], int, str]


def _read_csv_raw(p: Path, kind: str, spec: FormatSpec, want_lines: bool) -> _CsvRaw:
    """Read the needed columns of a CSV as strings; return layout, columns, ragged rows, first
    line, encoding.

    The encoding is the first of the format's that decodes the file's start (``_decode_head``)
    and, read with it, the whole file: a file whose first bytes that are not ASCII come late
    (a GBK Tmall log whose first 64 KiB are ASCII) is read again in the next encoding that
    fits, not refused."""
    head = _read_head(p, kind)
    if not head.strip():
        raise DataFileError(f"{p}: file is empty")
    remaining = spec.encodings
    failed: list[str] = []
    while True:
        try:
            text, encoding = _decode_head(p, head, remaining)
        except DataFileError:
            if not failed:
                raise
            raise DataFileError(f"{p}: not valid text in {' or '.join(spec.encodings)}: "
                                + "; ".join(failed)) from None
        remaining = remaining[remaining.index(encoding) + 1 :]
        try:
            return _read_csv_text(p, kind, spec, want_lines, text, encoding)
        except _NotThisEncoding as err:
            if not failed and not remaining:  # the format's only encoding
                raise err.error from None
            failed.append(str(err.error).removeprefix(f"{p}: "))
            if not remaining:
                raise DataFileError(f"{p}: not valid text in {' or '.join(spec.encodings)}: "
                                    + "; ".join(failed)) from None
            logger.info("%s: not %s beyond its start; reading it as %s", p, encoding, remaining[0])


class _CsvPlan(NamedTuple):
    """How to read a CSV: its layout, header, Arrow column names and types, rows to skip."""

    lay: FormatSpec
    header: dict[str, int] | None
    names: list[str]
    types: dict[str, pa.DataType]
    fields_of: dict[str, str]
    skip: int
    lines: list[str]


def _csv_plan(p: Path, spec: FormatSpec, text: str) -> _CsvPlan:
    """Choose the layout of a CSV from the decoded text of its start (``text``)."""
    lines = text.splitlines()
    lead = next((i for i, line in enumerate(lines) if line.strip()), None)
    if lead is None:  # only whitespace, e.g. Unicode separators that bytes.strip() keeps
        raise DataFileError(f"{p}: file holds no data (only blank lines or separators)")
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
    return _CsvPlan(lay, header, names, types, fields_of, skip, lines)


def _csv_options(plan: _CsvPlan, encoding: str, use_threads: bool,
                 on_invalid: Callable[[pacsv.InvalidRow], str]
                 ) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """The Arrow CSV reader's options for ``plan`` (every field read as text)."""
    return (
        pacsv.ReadOptions(
            use_threads=use_threads,
            block_size=_BLOCK_SIZE,
            skip_rows=plan.skip,
            column_names=plan.names,
            encoding="utf8" if encoding.replace("-", "").lower() == "utf8" else encoding,
        ),
        pacsv.ParseOptions(
            delimiter=plan.lay.delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
        ),
        pacsv.ConvertOptions(
            include_columns=list(plan.types),
            column_types=plan.types,
            strings_can_be_null=True,
            null_values=NULL_VALUES,
            quoted_strings_can_be_null=True,
        ),
    )


def _read_csv_text(
    p: Path, kind: str, spec: FormatSpec, want_lines: bool, text: str, encoding: str
) -> _CsvRaw:
    """``_read_csv_raw`` in one encoding, whose decoding of the file's start is ``text``;
    ``_NotThisEncoding`` when a later part of the file is not valid in it."""
    plan = _csv_plan(p, spec, text)
    lay, header, names, fields_of, skip, lines = (
        plan.lay, plan.header, plan.names, plan.fields_of, plan.skip, plan.lines)

    def read(use_threads: bool) -> tuple[pa.Table, list[tuple[int | None, str]]]:
        """Run the arrow CSV reader once."""
        ragged: list[tuple[int | None, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            """Collect a ragged row and skip it."""
            ragged.append((row.number, row.text))
            return "skip"

        stream = pa.input_stream(str(p), compression="gzip" if kind == "gzip" else None)
        try:
            ropts, popts, copts = _csv_options(plan, encoding, use_threads, on_invalid)
            table = pacsv.read_csv(stream, read_options=ropts, parse_options=popts,
                                   convert_options=copts)
        except UnicodeError as err:  # Python's decoder of an encoding other than UTF-8
            raise _NotThisEncoding(DataFileError(f"{p}: not valid {encoding} text ({err})")) from None
        except (pa.ArrowInvalid, OSError) as err:
            error = _arrow_error(p, err)
            if "UTF8" in str(err) or "UTF-8" in str(err):  # Arrow's UTF-8 check of a column
                raise _NotThisEncoding(error) from None
            raise error from None
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


def _check_one_value(p: Path, fld: str, name: str, t: pa.DataType) -> None:
    """Refuse a column type of several values per row (list, struct, map, union), also inside a
    dictionary, extension or run-end encoding (``SchemaError`` naming the file, field, column)."""
    inner = t
    while True:
        if isinstance(inner, pa.ExtensionType):
            inner = inner.storage_type
        elif pa.types.is_dictionary(inner) or pa.types.is_run_end_encoded(inner):
            inner = inner.value_type
        else:
            break
    if pa.types.is_nested(inner) or pa.types.is_union(inner):
        raise SchemaError(f"{p}: field '{fld}': column '{name}' has type {t}, several values per "
                          "row; it must hold one string or number per row")


def _plain_column(p: Path, fld: str, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A parquet column as the converters take it: one value per row, text as ``string``.

    Extension columns are read as their storage, run-end encoded ones decoded, binary and large
    or view strings cast to ``string`` (bytes that are not UTF-8 are a ``SchemaError``); a
    column of several values per row (list, struct, map, union) is a ``SchemaError`` naming the
    file, the field and the column."""
    t = col.type
    _check_one_value(p, fld, name, t)
    if isinstance(t, pa.ExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], t.storage_type)
    if pa.types.is_run_end_encoded(col.type):
        col = pa.chunked_array([pc.run_end_decode(c) for c in col.chunks], col.type.value_type)
    value = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    text = (pa.types.is_binary(value) or pa.types.is_large_binary(value)
            or pa.types.is_fixed_size_binary(value) or pa.types.is_binary_view(value)
            or pa.types.is_large_string(value) or pa.types.is_string_view(value))
    try:
        if text or (fld == "behavior" and not pa.types.is_dictionary(col.type)):
            col = pc.cast(col, pa.string())
    except pa.ArrowException as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SchemaError(f"{p}: field '{fld}': column '{name}' of type {t} cannot be read as "
                          f"text ({first})") from None
    return col


def parquet_layout(p: Path, spec: FormatSpec
                   ) -> tuple[pq.ParquetFile, list[str], FormatSpec, dict[str, int]]:
    """A parquet file opened, its column names, and the layout and header its names match."""
    try:
        pf = pq.ParquetFile(p)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as err:
        raise _arrow_error(p, err) from None
    matched = _match_header(spec, names)
    if matched is None:
        raise _header_problem(p, spec, names)
    lay, header = matched
    return pf, names, lay, header


def _read_parquet_raw(
    p: Path, spec: FormatSpec
) -> tuple[FormatSpec, dict[str, pa.ChunkedArray], dict[str, str]]:
    """Read the needed columns of a parquet file, mapped by column names."""
    pf, names, lay, header = parquet_layout(p, spec)
    for fld, col in lay.field_columns().items():  # before any data is read
        if col in header:
            name = names[header[col]]
            _check_one_value(p, fld, name, pf.schema_arrow.field(name).type)
    columns = {names[i] for i in header.values()}
    meta = pf.metadata
    stored = sum(meta.row_group(g).column(c).total_uncompressed_size
                 for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                 if meta.row_group(g).column(c).path_in_schema in columns)
    check_memory(p, max(meta.num_rows * PARQUET_ROW_BYTES, stored * PARQUET_TEXT_FACTOR),
                 f"{meta.num_rows:,} rows")
    try:
        table = pf.read(columns=list(dict.fromkeys(names[i] for i in header.values())))
    except (pa.ArrowException, OSError) as err:
        raise _arrow_error(p, err) from None
    raw, fields_of = {}, {}
    for fld, col in lay.field_columns().items():
        if col in header:
            name = names[header[col]]
            fields_of[fld] = name
            raw[fld] = _plain_column(p, fld, name, table.column(name))
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
        check_text_file(p, kind, TEXT_FACTOR, "CSV text")
        lay, raw, fields_of, ragged, first_line, _ = _read_csv_raw(
            p, kind, spec, quarantine_path is not None)
    if site is not None and "site" in raw:
        logger.warning("%s: site=%r replaces the file's '%s' column", p, site, lay.site)
        del raw["site"]
    n = len(raw["timestamp"])
    table, reason_of, checks = _validated(p, raw, lay, n, site)
    keep = reason_of == 0
    counts = np.bincount(reason_of, minlength=len(checks) + 1)
    rejected = {"ragged row": len(ragged)} if ragged else {}
    rejected.update({name: int(counts[i + 1]) for i, (name, _) in enumerate(checks) if counts[i + 1]})
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
