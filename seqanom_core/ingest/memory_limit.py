"""The memory a reader may use for one file, and its estimate before anything is read.

A reader builds Arrow columns of the file's text, converts and filters them, so it holds a few
times the file's (decompressed) size. Measured peak RSS above the interpreter's (2026-12-07,
2 M synthetic events): 3.9x the bytes of a Taobao-layout CSV (69 MB -> 272 MB), 3.4x those of a
canonical CSV, the same from gzip; 126 bytes per row from Parquet (17 MB -> 251 MB); 21x the
bytes of a token file (24 MB, 6.5 M tokens -> 499 MB). Each reader estimates its need from
what it knows before reading (the text's size, decompressed for gzip; the Parquet metadata)
with the factors below, a little above those measured, and refuses a file over the limit in one
line naming it, instead of running the machine out of memory.

The limit is ``SEQANOM_MAX_FILE_MEMORY`` (bytes, or a number with K, M, G or T: ``8G``; the
commands' ``--max-file-memory`` sets it), else half of this machine's memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa

from seqanom_core.errors import ConfigError, DataFileError

ENV = "SEQANOM_MAX_FILE_MEMORY"
TEXT_FACTOR = 4.5  # peak bytes per byte of CSV text (measured 3.4-3.9)
PARQUET_ROW_BYTES = 160  # peak bytes per Parquet row (measured 126)
PARQUET_TEXT_FACTOR = 3.0  # ... or per uncompressed byte of its columns read, if more
TOKENS_FACTOR = 24.0  # peak bytes per byte of a token file (measured 21)
_DEFLATE_MAX_RATIO = 1032  # deflate's largest expansion
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, where: str = ENV) -> int:
    """Bytes of ``text``: an integer, or a number with K, M, G or T (binary units), e.g. 8G."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    value = float(m.group(1)) * _UNITS[m.group(2).upper()] if m else 0.0
    if not m or value < 1 or value > 1 << 60:
        raise ConfigError(f"{where}: {text!r} is not a memory size (bytes, or a number with "
                          "K, M, G or T, e.g. 8G)")
    return int(value)


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def max_file_memory() -> int | None:
    """The limit per file in bytes: ``SEQANOM_MAX_FILE_MEMORY``, else half this machine's
    memory (None: no limit known)."""
    given = os.environ.get(ENV, "").strip()
    if given:
        return parse_size(given)
    total = machine_memory()
    return None if total is None else total // 2


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(p: Path, need: float, what: str) -> None:
    """Refuse reading ``p`` when ``need`` bytes (the estimate) exceed the limit per file."""
    limit = max_file_memory()
    if limit is not None and need > limit:
        raise DataFileError(
            f"{p}: reading it needs about {_human(need)} ({what}), over the limit of "
            f"{_human(limit)} per file; split the file, or raise the limit with "
            f"--max-file-memory or {ENV}")


def check_text_file(p: Path, kind: str, factor: float, what: str) -> None:
    """``check_memory`` for a text file read whole, needing ``factor`` times its text: a plain
    file by its size; a gzip file by its trailer where that settles it (the last member's size
    modulo 2**32 already over the limit, or a file too small to expand past it), else by
    decompressing it once to count (natively, stopping once past the limit: about a third of
    the time of reading it)."""
    limit = max_file_memory()
    if limit is None:
        return
    size = p.stat().st_size
    if kind != "gzip":
        check_memory(p, size * factor, what)
        return
    try:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(f.read(4), "little")
    except OSError:
        trailer = 0
    check_memory(p, max(trailer, size) * factor, what)
    cap = limit / factor
    if size * _DEFLATE_MAX_RATIO <= cap:
        return
    counted = 0
    try:
        with pa.input_stream(str(p), compression="gzip") as stream:
            while counted <= cap and (chunk := stream.read(1 << 24)):
                counted += len(chunk)
    except (pa.ArrowException, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataFileError(f"{p}: cannot read, corrupt or truncated gzip data ({first})") \
            from None
    if counted > cap:
        raise DataFileError(
            f"{p}: its {what} is over {_human(cap)}, which needs more than the limit of "
            f"{_human(limit)} per file; split the file, or raise the limit with "
            f"--max-file-memory or {ENV}")
