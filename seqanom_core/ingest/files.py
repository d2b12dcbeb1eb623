"""Opening input files: sniffing the kind (text, gzip, parquet), reading and decoding the start,
refusing binary data and paths that are no regular file, and one-line errors for pyarrow read
failures."""

from __future__ import annotations

import codecs
import errno
import gzip
import logging
import os
import stat
import zlib
from pathlib import Path

from seqanom_core.errors import DataFileError

logger = logging.getLogger("seqanom_core.ingest")  # one logger name for the whole package

_HEAD_BYTES = 1 << 16


_SPECIAL_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                  (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"))


def special_file(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is no regular file: "a directory", "a FIFO (named
    pipe)", "a socket", "a character device", "a block device" or "a symlink loop"; None for a
    regular file (symlinks followed) or a path that does not exist.

    Checked before a file is opened: opening a FIFO waits for a writer (or reader) forever, a
    device may never end, and a symlink loop fails deep inside a reader."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return None  # missing (or a dangling link): the open names the problem
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")


def _open_checked(path: str | Path) -> tuple[Path, str]:
    """Check a path is a readable non-empty file; return it and its sniffed kind."""
    p = Path(path)
    special = special_file(p)
    if special == "a directory":
        raise DataFileError(f"{p}: is a directory, expected a file")
    if special is not None:
        raise DataFileError(f"{p}: is {special}, not a regular file")
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
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
