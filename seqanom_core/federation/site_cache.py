"""A site's tokenised shoppers on its own disk, so that every message of a deployment does not
read and tokenise the site's files again.

In deployment each message runs in a fresh ClientApp process (``client/warm_clientapp.py`` forks
one per message), so the per-process cache of ``site_round.load_site`` never hits there. The
tokenised training, validation and test shoppers are written once, beside the site's ledger
(``<ledger>.tokens/``, which holds only what the site's own files hold, at the site), as one
``.npz`` named by a digest of everything they are built from: the files' paths, sizes and
modification times, the format, the tokenizer settings, the validation share and the seed.
Any change gives another name, and the older file is removed when the new one is written.
Written to a temporary name and renamed: a reader never sees half a file. Read with
``allow_pickle=False``: a cache file is arrays only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from seqanom_core.config import Source
from seqanom_core.sequences import SequenceSet

log = logging.getLogger(__name__)

_SETS = ("train", "valid", "test")


def cache_dir(ledger: Path | None) -> Path | None:
    """Where a site keeps its tokenised shoppers (None without a ledger path: no disk cache)."""
    return None if ledger is None else ledger.with_name(ledger.name + ".tokens")


def cache_key(files: list[Path | None], *settings: Any) -> str:
    """The digest of the files (path, size, modification time; absent ones as absent) and the
    settings the shoppers are built with."""
    h = hashlib.sha256()
    for f in files:
        if f is None or not f.is_file():
            h.update(b"-\n")
            continue
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr(settings).encode())
    return h.hexdigest()[:32]


def _arrays(prefix: str, seqs: SequenceSet) -> dict[str, np.ndarray]:
    out = {f"{prefix}.ids": seqs.ids.astype(str), f"{prefix}.offsets": seqs.offsets,
           f"{prefix}.source": np.asarray(str(seqs.source))}
    out.update({f"{prefix}.ch.{c}": v for c, v in seqs.channels.items()})
    for name in ("timestamp", "rows"):
        value = getattr(seqs, name)
        if value is not None:
            out[f"{prefix}.{name}"] = value
    return out


def _sequences(data: Any, prefix: str) -> SequenceSet | None:
    if f"{prefix}.ids" not in data:
        return None
    channels = {k.split(".", 2)[2]: data[k] for k in data.files if k.startswith(f"{prefix}.ch.")}
    return SequenceSet(ids=data[f"{prefix}.ids"], offsets=data[f"{prefix}.offsets"],
                       channels=channels, source=Source(str(data[f"{prefix}.source"])),
                       timestamp=data[f"{prefix}.timestamp"] if f"{prefix}.timestamp" in data
                       else None,
                       rows=data[f"{prefix}.rows"] if f"{prefix}.rows" in data else None)


def read_cached(directory: Path, key: str) -> dict[str, Any] | None:
    """The cached sets (``train``, ``valid``, ``test`` or None, ``test_labels`` or None) under
    ``key``, or None when there is none or it cannot be read (then it is rebuilt)."""
    path = directory / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            out: dict[str, Any] = {s: _sequences(data, s) for s in _SETS}
            out["test_labels"] = data["test_labels"] if "test_labels" in data else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("%s: unreadable token cache, rebuilt (%s)", path, err)
        return None
    if out["train"] is None or out["valid"] is None:
        return None
    return out


def write_cached(directory: Path, key: str, sets: dict[str, SequenceSet | None],
                 test_labels: np.ndarray | None) -> Path:
    """Write the sets under ``key`` (atomically) and remove the site's older cache files."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, seqs in sets.items():
        if seqs is not None:
            arrays.update(_arrays(name, seqs))
    if test_labels is not None:
        arrays["test_labels"] = np.asarray(test_labels)
    path = directory / f"{key}.npz"
    tmp = directory / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    for old in directory.glob("*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
