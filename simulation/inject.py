"""Seeded, labelled injection of realistic anomalies into canonical event tables.

Every kind edits only the chosen shopper's own history, keeps its site, and reuses item and
category ids from the table itself (item/category pairs are taken from real rows). Kinds that
add a segment replace a window of the shopper's history with a segment of comparable size
(session-like lengths), so an injected shopper's event count stays in the normal range;
events after the window are shifted later only if the segment overruns them. Apart from
``bot_replay`` (sub-second machine timing), timestamps stay whole seconds like the source.

The kinds themselves: ``simulation/anomaly_kinds.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from seqanom_core.errors import ConfigError
from seqanom_core.schema import check_events, encode_values
from simulation.anomaly_kinds import (
    ANOMALY_KINDS,
    ELIGIBLE,
    KIND_FUNCTIONS,
    ORDER_ONLY_KINDS,
    Shopper,
    build_pools,
)

logger = logging.getLogger(__name__)
__all__ = ["ANOMALY_KINDS", "ORDER_ONLY_KINDS", "inject_anomalies"]


def _check_kinds(kinds: Sequence[str] | None) -> list[str]:
    """Validate requested kinds (default: all)."""
    if kinds is None:
        return list(ANOMALY_KINDS)
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"unknown anomaly kind(s) {unknown or '(none given)'}; "
            f"known kinds: {', '.join(ANOMALY_KINDS)}"
        )
    return kinds


def inject_anomalies(
    events: pa.Table,
    *,
    rate: float = 0.1,
    users: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[pa.Table, pd.DataFrame]:
    """Inject labelled anomalies into some shoppers; return (events, labels per shopper)."""
    kinds = _check_kinds(kinds)
    if not (isinstance(rate, (int, float)) and 0.0 < rate <= 1.0):
        raise ConfigError(f"rate must be in (0, 1], got {rate!r}")
    t = check_events(events, "inject_anomalies")
    rng = np.random.default_rng(seed)
    ucode, udict = encode_values(t["user_id"])
    icode, idict = encode_values(t["item_id"])
    ccode, cdict = encode_values(t["category_id"])
    beh = t["behavior"].to_numpy().astype(np.int8)
    ts = t["timestamp"].to_numpy().astype(np.float64)
    n_users = len(udict)
    user_names = udict

    if users is None:
        n_pick = min(n_users, max(1, round(rate * n_users)))
        chosen = rng.choice(n_users, size=n_pick, replace=False)
    else:
        index = {u: i for i, u in enumerate(user_names)}
        missing = [u for u in users if str(u) not in index]
        if missing:
            raise ConfigError(f"users not in the events table: {missing[:5]}")
        chosen = np.asarray(list(dict.fromkeys(index[str(u)] for u in users)), dtype=np.int64)
    perm = rng.permutation(chosen)
    kind_of = {int(u): kinds[i % len(kinds)] for i, u in enumerate(perm)}

    order = np.lexsort((np.arange(ucode.size), ts, ucode))
    counts = np.bincount(ucode, minlength=n_users)
    ustart = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def shopper(u: int) -> Shopper:
        rows = order[ustart[u] : ustart[u] + counts[u]]
        return Shopper(icode[rows], ccode[rows], beh[rows], ts[rows])

    _swap_ineligible(kind_of, perm, shopper)
    pools = build_pools(icode, ccode, beh, len(cdict))

    new_parts: list[tuple[int, Shopper]] = []
    for u in perm:
        u = int(u)
        new_parts.append((u, KIND_FUNCTIONS[kind_of[u]](shopper(u), rng, pools)))

    is_chosen = np.zeros(n_users, dtype=bool)
    is_chosen[list(kind_of)] = True
    first_row = np.full(n_users, ucode.size, dtype=np.int64)
    np.minimum.at(first_row, ucode, np.arange(ucode.size))
    kept = np.flatnonzero(~is_chosen[ucode])
    if new_parts:
        new_user = np.concatenate([np.full(s.ts.size, u) for u, s in new_parts])
        new_item = np.concatenate([s.item for _, s in new_parts])
        new_cat = np.concatenate([s.cat for _, s in new_parts])
        new_beh = np.concatenate([s.beh for _, s in new_parts]).astype(np.int8)
        new_ts = np.concatenate([s.ts for _, s in new_parts])
        new_k = np.concatenate([np.arange(s.ts.size) for _, s in new_parts])
    else:
        new_user = new_item = new_cat = new_k = np.zeros(0, np.int64)
        new_beh, new_ts = np.zeros(0, np.int8), np.zeros(0)
    cols = {
        "user_id": pa.array(udict, t.schema.field("user_id").type).take(pa.array(new_user, pa.int64())),
        "item_id": pa.array(idict, t.schema.field("item_id").type).take(pa.array(new_item, pa.int64())),
        "category_id": pa.array(cdict, t.schema.field("category_id").type).take(pa.array(new_cat, pa.int64())),
        "behavior": pa.array(new_beh, pa.int8()),
        "timestamp": pa.array(new_ts, pa.float64()),
    }
    if "site" in t.column_names:
        site = t["site"].combine_chunks()
        cols["site"] = site.take(pa.array(first_row[new_user], pa.int64()))
    injected = pa.table(cols, schema=t.schema)
    combined = pa.concat_tables([t.take(pa.array(kept, pa.int64())), injected])
    key1 = np.concatenate([kept, first_row[new_user]])
    key2 = np.concatenate([np.zeros(kept.size, np.int64), new_k])
    out = combined.take(pa.array(np.lexsort((key2, key1)), pa.int64())).combine_chunks()

    labels = pd.DataFrame(
        {
            "user_id": pd.Series(user_names, dtype=str),
            "is_anomalous": is_chosen.astype(np.int64),
            "kind": pd.Series([kind_of.get(i, "") for i in range(n_users)], dtype=str),
        }
    )
    logger.info(
        "injected %d anomalous shoppers of %d (%s)",
        len(kind_of),
        n_users,
        ", ".join(f"{k}={sum(v == k for v in kind_of.values())}" for k in kinds),
    )
    return check_events(out, "inject_anomalies"), labels


def _swap_ineligible(
    kind_of: dict[int, str], perm: np.ndarray, shopper: Callable[[int], Shopper]
) -> None:
    """Give each order-only kind to shoppers it changes, swapping kinds with shoppers of the other
    kinds (counts stay the same); a shopper no donor can replace keeps its kind."""
    for target, eligible in ELIGIBLE.items():
        bad = [int(u) for u in perm if kind_of[int(u)] == target and not eligible(shopper(int(u)))]
        if not bad:
            continue
        donors = (
            int(u)
            for u in perm
            if kind_of[int(u)] not in ORDER_ONLY_KINDS and eligible(shopper(int(u)))
        )
        for u in bad:
            d = next(donors, None)
            if d is None:
                break
            kind_of[u], kind_of[d] = kind_of[d], target
