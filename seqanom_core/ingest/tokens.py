"""The pre-tokenised "tokens" format: one sequence of non-negative integer tokens per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.ingest.files import _HEAD_BYTES, _open_checked, _read_head, _refuse_binary
from seqanom_core.ingest.memory_limit import TOKENS_FACTOR, check_text_file
from seqanom_core.ingest.report import IngestReport, _log_summary
from seqanom_core.ingest.writers import _write_csv

_UTF8_BOM = b"\xef\xbb\xbf"
#: Default most tokens one line (one sequence) may hold; a longer line is quarantined. Scoring
#: costs about 70 microseconds per token on one CPU thread with a small model, so a line of
#: millions of tokens would keep a command busy for minutes; real sequences (sessions, log
#: blocks) hold tens to thousands.
MAX_LINE_TOKENS = 100_000


@dataclass
class TokenSequences:
    """Pre-tokenised sequences: one int64 array per kept input line."""

    ids: list[str]
    tokens: list[np.ndarray]

    def __len__(self) -> int:
        """Return the number of sequences."""
        return len(self.ids)


def read_token_sequences(
    path: str | Path, *, quarantine_path: str | Path | None = None,
    max_line_tokens: int = MAX_LINE_TOKENS,
) -> tuple[TokenSequences, IngestReport]:
    """Read one sequence of space-separated non-negative integer tokens per line (id = 0-based
    line); a line of more than ``max_line_tokens`` tokens is quarantined like a bad one."""
    if isinstance(max_line_tokens, bool) or not isinstance(max_line_tokens, int) \
            or max_line_tokens < 1:
        raise ConfigError(f"max_line_tokens must be a positive integer, not {max_line_tokens!r}")
    p, kind = _open_checked(path)
    if kind == "parquet":
        raise DataFileError(f"{p}: token sequences must be a text file (.txt or .txt.gz), not parquet")
    check_text_file(p, kind, TOKENS_FACTOR, "token text")
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
    labels = ["non-integer token", "negative token", "token too large",
              f"more than {max_line_tokens:,} tokens", "empty line"]
    code = np.zeros(n, dtype=np.int16)
    per_line = np.bincount(parent, minlength=n)
    code[per_line > max_line_tokens] = 4  # labels[3]; a bad token takes precedence
    for i, mask in reversed(list(enumerate([~digits & ~neg, neg, digits & ~ok]))):
        code[parent[mask]] = i + 1
    code[per_line == 0] = len(labels)  # blank or whitespace-only line
    keep = code == 0
    if n and not keep.any():
        bad = int(np.flatnonzero(code != len(labels))[0]) if (code != len(labels)).any() else 0
        raise SchemaError(
            f"{p}: no line is a sequence of at most {max_line_tokens:,} non-negative integer "
            f"tokens (e.g. line {bad + 1}: {lines[bad].as_py().rstrip()[:80]!r}: "
            f"{labels[code[bad] - 1]})"
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
