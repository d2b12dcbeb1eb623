"""Writing tables: canonical events to CSV/CSV.gz/parquet, and any table as CSV (atomically)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqanom_core.atomic_files import replaced_on_success
from seqanom_core.errors import DataFileError, SchemaError
from seqanom_core.schema import BEHAVIORS, check_events

logger = logging.getLogger("seqanom_core.ingest")  # one logger name for the whole package


def _write_csv(table: pa.Table, p: Path) -> None:
    """Write a table as CSV (gzip when the name ends in .gz) atomically; quote only when needed."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(table.column_names)
    header = buf.getvalue().encode("utf-8")

    def attempt(tmp: Path, quoting: str) -> None:
        """Write the whole file with one quoting style."""
        gz = p.name.lower().endswith(".gz")
        with pa.CompressedOutputStream(str(tmp), "gzip") if gz else pa.OSFile(str(tmp), "wb") as out:
            out.write(header)
            options = pacsv.WriteOptions(include_header=False, quoting_style=quoting)
            pacsv.write_csv(table, out, write_options=options)

    try:
        with replaced_on_success(p) as tmp:
            try:
                attempt(tmp, "none")
            except pa.ArrowInvalid:  # a value holds a delimiter, quote or newline
                attempt(tmp, "needed")
    except OSError as err:
        raise DataFileError(f"{p}: cannot write ({err})") from None


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
        try:
            with replaced_on_success(p) as tmp:
                pq.write_table(table, str(tmp))
        except OSError as err:
            raise DataFileError(f"{p}: cannot write ({err})") from None
    elif lower.endswith((".csv", ".csv.gz")):
        _write_csv(table, p)
    else:
        raise DataFileError(f"{p}: unknown output extension; use .csv, .csv.gz or .parquet")
    logger.info("%s: wrote %d events", p, table.num_rows)
