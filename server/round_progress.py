"""The central team's view of a federated run: one line per completed round, from its checkpoints.

Everything comes from the ``round.json`` of each complete checkpoint (written in full, then
renamed, so a round being written is never read half-way): how many sites trained, declined
(privacy budget) or had their update rejected, the worst cumulative epsilon of any site, the
site-level epsilon of a run with central DP, the federated threshold (rounds that calibrated)
and the round's wall time. Losses and AUROC stay at the sites (their local logs): they are not
releases the privacy guarantee covers. ``seqanom rounds`` prints it; with
``--follow`` it keeps printing rounds as they complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError
from seqanom_core.privacy import guarantee_text
from server.checkpoints import ROUND_FILE, list_checkpoints

COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (row key, heading, width)
    ("round", "round", 5),
    ("trained", "trained", 7),
    ("declined", "declined", 8),
    ("rejected", "rejected", 8),
    ("epsilon", "epsilon", 7),
    ("site_epsilon", "site eps", 8),
    ("threshold", "threshold", 9),
    ("seconds", "seconds", 7),
)


def read_round(path: Path) -> dict[str, Any]:
    """The record of one checkpoint (``round.json``); a damaged one is an error naming it."""
    file = path / ROUND_FILE
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{file}: cannot read the round record: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get("round"), int):
        raise ConfigError(f"{file}: not a round record (no round number)")
    return record


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def round_row(record: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """One round as a flat row: the figures the table and ``--json`` show."""
    sites = record.get("sites") or {}
    declined = sorted(n for n, s in sites.items() if isinstance(s, dict) and s.get("declined"))
    rejected = [r.get("site", "?") for r in record.get("rejected") or [] if isinstance(r, dict)]
    privacy = record.get("privacy") or {}
    levels = {g.get("level"): g for g in privacy.get("guarantees") or [] if isinstance(g, dict)}
    shopper, site = levels.get("shopper", {}), levels.get("site", {})
    return {
        "round": record["round"],
        "checkpoint": str(checkpoint),
        "trained": len(sites) - len(declined) - len(set(rejected) & set(sites)),
        "declined": len(declined),
        "rejected": len(rejected),
        "declined_sites": declined,
        "rejected_sites": rejected,
        "epsilon": _number(shopper.get("epsilon")),
        "delta": _number(shopper.get("delta")),
        "epsilon_per_site": shopper.get("epsilon_per_site") or {},
        "site_epsilon": _number(site.get("epsilon")),
        "site_delta": _number(site.get("delta")),
        "threshold": _number(record.get("threshold")),
        "seconds": _number(record.get("seconds")),
    }


def read_rows(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """Rows of every complete checkpoint under ``checkpoint_dir``, oldest first."""
    return [round_row(read_round(path), path) for _, path in list_checkpoints(checkpoint_dir)]


def _cell(value: Any, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.3f}".rjust(width)
    return str(value).rjust(width)


def header() -> str:
    """The table's heading line."""
    return "  ".join(h.rjust(w) for _, h, w in COLUMNS)


def format_row(row: dict[str, Any]) -> str:
    """One table line (``-`` where a round has no such figure, e.g. AUROC without labels)."""
    return "  ".join(_cell(row.get(key), w) for key, _, w in COLUMNS)


def privacy_lines(record: dict[str, Any]) -> list[str]:
    """What the latest round's privacy statement guarantees, one line per guarantee."""
    privacy = record.get("privacy") or {}
    if not privacy.get("dp"):
        return ["privacy: no differential privacy (no epsilon is claimed)"]
    lines = []
    for g in privacy.get("guarantees") or []:
        eps, delta = _number(g.get("epsilon")), _number(g.get("delta"))
        protects = str(g.get("protects", g.get("level", "?")))
        lines.append(f"privacy: {guarantee_text(eps, delta, protects)}; "
                     f"{g.get('accounted_by', '')}".rstrip("; "))
    return lines or ["privacy: the round record states no guarantee"]


def follow_rows(checkpoint_dir: Path, interval: float, *, seen: int = 0,
                sleep: Callable[[float], None] = time.sleep,
                polls: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows of checkpoints completed after the first ``seen`` ones, as they appear; checks every
    ``interval`` seconds (``polls``: how many checks, None = until interrupted)."""
    done = 0
    while polls is None or done < polls:
        rows = read_rows(checkpoint_dir)
        yield from rows[seen:]
        seen = max(seen, len(rows))
        done += 1
        if polls is None or done < polls:
            sleep(interval)
