"""Helpers of the live == batch tests: events as a site posts them, and every prefix of every
shopper as a shopper of its own (what batch scoring gives after each event)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seqanom_core.live.events import LiveEvent
from seqanom_core.schema import events_from_arrays


def live_events(table: pa.Table) -> list[LiveEvent]:
    """Events in time order (ties in row order), as a site would post them."""
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    order = np.lexsort((np.arange(table.num_rows), np.asarray(cols["timestamp"])))
    return [LiveEvent(str(cols["user_id"][i]), str(cols["item_id"][i]), str(cols["category_id"][i]),
                      int(cols["behavior"][i]), float(cols["timestamp"][i])) for i in order]


def prefix_table(events: list[LiveEvent]) -> tuple[pa.Table, list[str]]:
    """Every prefix of every shopper's events as its own shopper ``user#k`` (k events)."""
    by_user: dict[str, list[LiveEvent]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    rows: list[tuple[str, LiveEvent]] = []
    for u, evs in by_user.items():
        for k in range(1, len(evs) + 1):
            rows += [(f"{u}#{k}", e) for e in evs[:k]]
    table = events_from_arrays([r[0] for r in rows], [r[1].item_id for r in rows],
                               [r[1].category_id for r in rows], [r[1].behavior for r in rows],
                               [r[1].timestamp for r in rows])
    return table, list(by_user)
