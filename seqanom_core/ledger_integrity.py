"""What keeps a privacy ledger file honest: its hash chain, the site's head record, its lock.

- **Hash chain.** A ledger file starts with a header (site, accountant, first budget) and every
  entry stores the SHA-256 of the entry before it (the first: of the header) and its own. An
  edited, reordered or removed entry breaks the chain and the ledger is refused on load. This
  is tamper-evidence, not a signature: whoever rewrites every hash after an edit, and the head
  record too, is not detected by the file alone.
- **Head record** (``<ledger>.head``, beside the ledger): the site's own note that a
  ledger existed there, with how many entries it had and the hash of the last. A ledger that
  is missing, or older than the note (rolled back to an earlier copy), or that does not continue
  it, is refused unless the operator explicitly starts a new one.
- **Lock** (``<ledger>.lock``, ``fcntl.flock``): held from opening the ledger for a training
  until its spend is written, so two trainings never both spend the same remaining budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError

log = logging.getLogger(__name__)

HASH_KEYS = ("prev", "hash")


class LedgerInUse(ConfigError):
    """Another process (or thread) holds the ledger's lock."""


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of a chained entry: over everything in it but its own ``hash``."""
    return digest({k: v for k, v in entry.items() if k != "hash"})


def chain(entry: dict[str, Any], prev: str) -> dict[str, Any]:
    """``entry`` linked after the entry (or header) whose hash is ``prev``."""
    out = {k: v for k, v in entry.items() if k not in HASH_KEYS}
    out["prev"] = prev
    out["hash"] = entry_hash(out)
    return out


def verify_chain(header_hash: str, entries: list[dict[str, Any]]) -> str:
    """The hash of the last entry (the header's with none); ConfigError naming the first entry
    that was edited, moved, or follows a removed one."""
    prev = header_hash
    for i, e in enumerate(entries):
        if e.get("prev") != prev:
            raise ConfigError(f"entry {i} does not follow "
                              f"{'the header' if i == 0 else f'entry {i - 1}'} (entries were "
                              "edited, reordered or removed); the ledger is refused")
        if e.get("hash") != entry_hash(e):
            raise ConfigError(f"entry {i} does not match its hash (edited after it was "
                              "written); the ledger is refused")
        prev = str(e["hash"])
    return prev


# --------------------------------------------------------------------------- durable writes
def write_json_durable(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, fsync it, rename it onto
    ``path`` and fsync the directory: once this returns, the file survives a crash."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- head record
def head_path(ledger: str | Path) -> Path:
    """Where the site notes the ledger's last entry: ``<ledger>.head``."""
    p = Path(ledger)
    return p.with_name(p.name + ".head")  # not *.json: globs over ledgers skip it


def read_head(ledger: str | Path) -> dict[str, Any] | None:
    """The site's head record of ``ledger`` (None: it never saved one there)."""
    p = head_path(ledger)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
        return {"site": str(data["site"]), "entries": int(data["entries"]),
                "hash": str(data["hash"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{p}: cannot read the ledger's head record: {err}") from err


def write_head(ledger: str | Path, site: str, entries: int, last_hash: str) -> None:
    """Note that ``ledger`` now holds ``entries`` entries ending in ``last_hash``."""
    write_json_durable(head_path(ledger), {"ledger": Path(ledger).name, "site": site,
                                           "entries": entries, "hash": last_hash})


def check_head(ledger: str | Path, hashes: list[str]) -> None:
    """Refuse a ledger (``hashes``: the header's, then each entry's) that is older than the
    site's head record or does not continue it."""
    head = read_head(ledger)
    if head is None:
        return
    n = head["entries"]
    if len(hashes) - 1 < n:
        raise ConfigError(
            f"{ledger}: privacy ledger has {len(hashes) - 1} entries, but this site recorded "
            f"{n} ({head_path(ledger).name}): it was rolled back to an older copy; restore the "
            "latest ledger (or move this one away and start anew with --new-ledger)")
    if hashes[n] != head["hash"]:
        raise ConfigError(
            f"{ledger}: privacy ledger does not continue the one this site recorded "
            f"({'its header' if n == 0 else f'entry {n - 1}'} differs from "
            f"{head_path(ledger).name}): it was replaced; restore "
            "the site's own ledger (or move this one away and start anew with --new-ledger)")


def check_missing(ledger: str | Path, new_ledger: bool) -> None:
    """A missing ledger where the site has kept one is refused unless ``new_ledger``."""
    head = read_head(ledger)
    if head is None:
        return
    if not new_ledger:
        raise ConfigError(
            f"{ledger}: privacy ledger is missing, but site {head['site']!r} kept one there "
            f"({head['entries']} entries, {head_path(ledger).name}); restore it, or start a "
            "new ledger explicitly (--new-ledger)")
    log.warning("%s: starting a new privacy ledger where site %r kept one of %d entries "
                "(--new-ledger)", ledger, head["site"], head["entries"])


# --------------------------------------------------------------------------- lock
def lock_path(ledger: str | Path) -> Path:
    """The ledger's lock file: ``<ledger>.lock``."""
    p = Path(ledger)
    return p.with_name(p.name + ".lock")


@contextmanager
def ledger_lock(ledger: str | Path, timeout: float = 0.0) -> Iterator[None]:
    """Hold the ledger's exclusive lock for the block; wait up to ``timeout`` seconds for it,
    then raise LedgerInUse."""
    p = lock_path(ledger)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(timeout, 0.0)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerInUse(
                        f"{ledger}: privacy ledger is in use by another training (lock "
                        f"{p.name} held{f' for {timeout:g} s' if timeout else ''}); wait for it "
                        "to record its spend, then run again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
