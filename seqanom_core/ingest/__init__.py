"""Read input files into the canonical events table: map columns, validate, quarantine bad rows.

Whole-file problems (missing or unreadable file, empty file, corrupt gzip, missing column, a
field that no row can be parsed as) raise :class:`DataFileError` / :class:`SchemaError` with a
one-line message that starts with the file path. Row-level problems (null or blank ids,
unparseable timestamps, timestamps outside ``schema.TIMESTAMP_WINDOW``, unknown behaviours, ragged
rows, ...) are dropped, counted by reason in the :class:`IngestReport` and, when asked, written
to a quarantine CSV with their raw values, the reason and the 1-based source line (parquet: row)
number. Row order is kept. A headerless file is read positionally even when its first row is
bad (that row is then quarantined like any other).

Modules: ``files`` (opening, sniffing, decoding), ``layouts`` (header / positional layout),
``timestamps`` and ``conversion`` (raw columns to the event schema), ``report`` (the
:class:`IngestReport` and its summary log line), ``quarantine`` (the rejected-rows CSV),
``readers`` (:func:`read_events`), ``writers`` (:func:`write_events`) and ``tokens``
(:func:`read_token_sequences`); ``streaming`` (``stream_ingest``: a file too big to hold, in
record batches, to tokenised shards on disk) and ``shards`` (reading them back memory-mapped).
Everything logs under ``seqanom_core.ingest``, the per-file
summary under ``seqanom_core.ingest.summary``.
"""

from __future__ import annotations

from seqanom_core.ingest.conversion import NULL_VALUES, OUT_OF_RANGE
from seqanom_core.ingest.readers import read_events, read_nonempty_events
from seqanom_core.ingest.report import IngestReport
from seqanom_core.ingest.tokens import TokenSequences, read_token_sequences
from seqanom_core.ingest.writers import write_events

__all__ = [
    "NULL_VALUES",
    "OUT_OF_RANGE",
    "IngestReport",
    "TokenSequences",
    "read_events",
    "read_nonempty_events",
    "read_token_sequences",
    "write_events",
]
