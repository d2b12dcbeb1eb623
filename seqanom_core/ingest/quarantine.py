"""The quarantine CSV: rejected rows with their raw values, reason and source line number."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.ingest.writers import _write_csv

logger = logging.getLogger("seqanom_core.ingest")  # one logger name for the whole package


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
