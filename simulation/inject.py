"""Seeded, labelled injection of realistic anomalies into canonical event tables.

Every kind edits only the chosen shopper's own history, keeps its site, and reuses item and
category ids from the table itself (item/category pairs are taken from real rows). Kinds that
add a segment replace a window of the shopper's history with a segment of comparable size
(session-like lengths), so an injected shopper's event count stays in the normal range;
events after the window are shifted later only if the segment overruns them. Apart from
``bot_replay`` (sub-second machine timing), timestamps stay whole seconds like the source.

Kinds:

- ``crawler``: catalogue scraper. A long run (40-80% of the history, 20..200 events) of
  views of distinct items sampled uniformly over the catalogue (so it spans many
  categories), one every ~1-3 s; no carts, favs or buys.
- ``cart_stuffing``: a session-like burst (10..60 events) of mostly cart adds (~80%) of items
  from the shopper's own categories, interleaved with a few views, no buys.
- ``account_takeover``: from a point 40-75% into the history, the rest is replaced by
  activity in 2-4 categories the shopper never used, at a faster pace (gaps ~8 s) and with
  quick view -> cart -> buy funnels (high buy share).
- ``bot_replay``: one of the shopper's real sessions (3+ events) replayed back to back
  several times at machine speed: identical event contents, regular sub-second gaps.
- ``click_farm``: views of the same 2-4 items over and over (15..120 events), evenly paced.
- ``fraud_burst``: 3-8 buys of high-turnover items (most bought in the table) that the
  shopper never viewed, within a few minutes.
- ``impossible_order`` (order-only): same multiset of events and the same timestamps, but
  inside each item's funnel the rows are reordered buy > fav/cart > view, so buys and carts
  come before the views of the same item.
- ``shuffle`` (order-only): the shopper's event rows randomly permuted over the kept sorted
  timestamps: counts and gaps are unchanged, category runs and funnels are broken.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from seqanom_core.config import SESSION_GAP_S
from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIOR_CODE, check_events, encode_values

logger = logging.getLogger(__name__)

ANOMALY_KINDS: tuple[str, ...] = (
    "crawler",
    "cart_stuffing",
    "account_takeover",
    "bot_replay",
    "click_farm",
    "fraud_burst",
    "impossible_order",
    "shuffle",
)
#: Kinds that only reorder a shopper's events (same multiset, same timestamps).
ORDER_ONLY_KINDS: tuple[str, ...] = ("impossible_order", "shuffle")

_VIEW, _CART, _FAV, _BUY = (BEHAVIOR_CODE[b] for b in ("view", "cart", "fav", "buy"))


@dataclass
class _Shopper:
    """One shopper's time-ordered events as integer codes."""

    item: np.ndarray
    cat: np.ndarray
    beh: np.ndarray
    ts: np.ndarray


@dataclass
class _Pools:
    """Real (item, category) pairs of the table to draw injected events from."""

    item: np.ndarray  # one row per distinct item
    cat: np.ndarray
    weight: np.ndarray  # event count per distinct item
    by_cat_order: np.ndarray  # indexes into item/cat, sorted by category
    cat_start: np.ndarray  # start of each category in by_cat_order
    cat_count: np.ndarray
    hot: np.ndarray  # indexes of high-turnover items (most bought)


def _build_pools(item: np.ndarray, cat: np.ndarray, beh: np.ndarray, n_cat: int) -> _Pools:
    """Index the table's items by category and turnover."""
    uitem, first, counts = np.unique(item, return_index=True, return_counts=True)
    ucat = cat[first]
    order = np.argsort(ucat, kind="stable")
    cat_count = np.bincount(ucat, minlength=n_cat)
    cat_start = np.concatenate([[0], np.cumsum(cat_count)[:-1]])
    buys = np.bincount(item[beh == _BUY], minlength=int(item.max()) + 1)[uitem]
    score = buys * 1e6 + counts  # most bought, ties broken by most events
    n_hot = int(min(uitem.size, max(20, uitem.size // 100)))
    hot = np.argsort(-score, kind="stable")[:n_hot]
    return _Pools(uitem, ucat, counts.astype(float), order, cat_start, cat_count, hot)


def _int_gaps(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """Whole-second log-normal gaps (>= 1 s)."""
    return np.maximum(np.round(median * np.exp(sigma * rng.standard_normal(n))), 1.0)


def _seg_len(
    rng: np.random.Generator, n: int, lo_frac: float, hi_frac: float, lo: int, hi: int
) -> int:
    """Segment length: a fraction of the history, clipped to [lo, hi]."""
    return int(np.clip(round(n * rng.uniform(lo_frac, hi_frac)), lo, hi))


def _splice(
    s: _Shopper,
    rng: np.random.Generator,
    item: np.ndarray,
    cat: np.ndarray,
    beh: np.ndarray,
    rel_ts: np.ndarray,
    start: int | None = None,
) -> _Shopper:
    """Replace a window of the history by a segment with times relative to its start."""
    n, m = s.ts.size, item.size
    r = min(m, n)
    a = int(rng.integers(0, n - r + 1)) if start is None else start
    b = a + (n - a if start is not None else r)
    t0 = s.ts[a] if a < n else s.ts[-1] + 60.0
    seg_ts = t0 + rel_ts
    tail_ts = s.ts[b:]
    if tail_ts.size:
        overrun = seg_ts[-1] + 1.0 - tail_ts[0]
        if overrun > 0:
            tail_ts = tail_ts + np.ceil(overrun)
    return _Shopper(
        np.concatenate([s.item[:a], item, s.item[b:]]),
        np.concatenate([s.cat[:a], cat, s.cat[b:]]),
        np.concatenate([s.beh[:a], beh.astype(np.int8), s.beh[b:]]),
        np.concatenate([s.ts[:a], seg_ts, tail_ts]),
    )


def _rel_times(gaps: np.ndarray) -> np.ndarray:
    """Times relative to a segment start (first event at 0) from gaps between events."""
    return np.concatenate([[0.0], np.cumsum(gaps[1:])]) if gaps.size else gaps


def _sample_in_cats(rng: np.random.Generator, p: _Pools, cats: np.ndarray) -> np.ndarray:
    """One item index per entry of ``cats`` (category codes), popularity-weighted."""
    out = np.empty(cats.size, dtype=np.int64)
    for c in np.unique(cats):
        idx = p.by_cat_order[p.cat_start[c] : p.cat_start[c] + p.cat_count[c]]
        w = p.weight[idx] / p.weight[idx].sum()
        sel = cats == c
        out[sel] = rng.choice(idx, size=int(sel.sum()), p=w)
    return out


def _crawler(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """Long fast run of views of many distinct items across the catalogue."""
    m = min(_seg_len(rng, s.ts.size, 0.4, 0.8, 20, 200), p.item.size)
    idx = rng.choice(p.item.size, size=m, replace=False)
    gaps = _int_gaps(rng, m, 2.0, 0.35)
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _VIEW), _rel_times(gaps))


def _cart_stuffing(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """Many cart adds of items of the shopper's own categories, few views, no buys."""
    m = _seg_len(rng, s.ts.size, 0.2, 0.4, 10, 60)
    cats = rng.choice(np.unique(s.cat), size=m)
    idx = _sample_in_cats(rng, p, cats)
    beh = np.where(rng.random(m) < 0.8, _CART, _VIEW)
    gaps = _int_gaps(rng, m, 15.0, 0.8)
    return _splice(s, rng, p.item[idx], p.cat[idx], beh, _rel_times(gaps))


def _account_takeover(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """From some point on: new categories, faster pace, quick buys."""
    n = s.ts.size
    start = int(np.clip(np.floor(n * rng.uniform(0.4, 0.75)), 1, max(n - 3, 1)))
    m = max(n - start, 3)
    unseen = np.setdiff1d(np.flatnonzero(p.cat_count > 0), np.unique(s.cat))
    if unseen.size == 0:
        unseen = np.flatnonzero(p.cat_count > 0)
    w = p.cat_count[unseen].astype(float)
    k = min(int(rng.integers(2, 5)), int(unseen.size))
    new_cats = rng.choice(unseen, size=k, replace=False, p=w / w.sum())
    items: list[int] = []
    behs: list[int] = []
    while len(items) < m:  # quick funnels: view (1-2x) -> cart (often) -> buy (often)
        it = int(_sample_in_cats(rng, p, rng.choice(new_cats, size=1))[0])
        funnel = [_VIEW] * int(rng.integers(1, 3))
        if rng.random() < 0.5:
            funnel.append(_CART)
        if rng.random() < 0.6:
            funnel.append(_BUY)
        items += [it] * len(funnel)
        behs += funnel
    idx = np.asarray(items[:m])
    gaps = _int_gaps(rng, m, 8.0, 0.6)
    breaks = rng.random(m) < 0.08  # a few short pauses between bursts
    gaps[breaks] = np.round(rng.uniform(SESSION_GAP_S + 1, 4 * 3600, size=int(breaks.sum())))
    return _splice(
        s, rng, p.item[idx], p.cat[idx], np.asarray(behs[:m]), _rel_times(gaps), start=start
    )


def _bot_replay(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """A real session replayed back to back at machine speed with regular sub-second gaps."""
    n = s.ts.size
    starts = np.flatnonzero(np.concatenate([[True], np.diff(s.ts) > SESSION_GAP_S]))
    ends = np.concatenate([starts[1:], [n]])
    ok = np.flatnonzero((ends - starts >= 3) & (ends - starts <= 30))
    if ok.size:
        j = int(rng.choice(ok))
        a, b = int(starts[j]), int(ends[j])
    else:
        a, b = max(n - 5, 0), n
    length = b - a
    m_target = _seg_len(rng, n, 0.3, 0.6, 12, 120)
    reps = max(3, int(np.ceil(m_target / length)))
    src = np.tile(np.arange(a, b), reps)
    step = rng.uniform(0.2, 0.9)
    gaps = step * (1.0 + rng.uniform(-0.02, 0.02, size=src.size))
    return _splice(s, rng, s.item[src], s.cat[src], s.beh[src], _rel_times(gaps))


def _click_farm(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """Repeated views of the same few items."""
    m = _seg_len(rng, s.ts.size, 0.3, 0.6, 15, 120)
    k = min(int(rng.integers(2, 5)), int(p.item.size))
    few = rng.choice(p.item.size, size=k, replace=False)
    idx = few[np.arange(m) % k] if rng.random() < 0.5 else rng.choice(few, size=m)
    gaps = _int_gaps(rng, m, 6.0, 0.2)
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _VIEW), _rel_times(gaps))


def _fraud_burst(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """A few buys of high-turnover items never viewed by the shopper, within minutes."""
    m = int(rng.integers(3, 9))
    cand = p.hot[~np.isin(p.item[p.hot], s.item)]
    if cand.size == 0:
        cand = p.hot
    idx = rng.choice(cand, size=m, replace=cand.size < m)
    gaps = np.round(rng.uniform(10.0, 90.0, size=m))
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _BUY), _rel_times(gaps))


def _funnel_reversal(s: _Shopper) -> np.ndarray:
    """Row order that puts each item's rows buy > fav > cart > view over the same slots."""
    n = s.ts.size
    pos = np.arange(n)
    rank = np.select([s.beh == _BUY, s.beh == _FAV, s.beh == _CART], [3, 2, 1], 0)
    slots = np.lexsort((pos, s.item))  # each item's positions, ascending
    rows = np.lexsort((pos, -rank, s.item))  # each item's rows, latest funnel stage first
    new_order = np.empty(n, dtype=np.int64)
    new_order[slots] = rows
    return new_order


def _order_eligible(s: _Shopper) -> bool:
    """Whether impossible_order changes anything for this shopper."""
    order = _funnel_reversal(s)
    return bool((s.beh[order] != s.beh).any() or (s.item[order] != s.item).any())


def _impossible_order(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """Same events and timestamps, funnels reversed (buy/cart before the view of the item)."""
    order = _funnel_reversal(s)
    if np.array_equal(order, np.arange(s.ts.size)):
        order = np.arange(s.ts.size)[::-1]  # nothing to reverse: play the history backwards
    return _Shopper(s.item[order], s.cat[order], s.beh[order], s.ts.copy())


def _shuffle(s: _Shopper, rng: np.random.Generator, p: _Pools) -> _Shopper:
    """Rows permuted over the kept sorted timestamps."""
    n = s.ts.size
    order = rng.permutation(n)
    if n > 1 and _same_events(s, order):  # e.g. only equal events changed places
        order = np.roll(np.arange(n), 1)  # differs unless every event is the same
    return _Shopper(s.item[order], s.cat[order], s.beh[order], s.ts.copy())


def _same_events(s: _Shopper, order: np.ndarray) -> bool:
    """Whether reordering by ``order`` leaves the shopper's event sequence unchanged."""
    return bool(np.array_equal(s.item[order], s.item) and np.array_equal(s.cat[order], s.cat)
                and np.array_equal(s.beh[order], s.beh))


_KIND_FN = {
    "crawler": _crawler,
    "cart_stuffing": _cart_stuffing,
    "account_takeover": _account_takeover,
    "bot_replay": _bot_replay,
    "click_farm": _click_farm,
    "fraud_burst": _fraud_burst,
    "impossible_order": _impossible_order,
    "shuffle": _shuffle,
}


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

    def shopper(u: int) -> _Shopper:
        rows = order[ustart[u] : ustart[u] + counts[u]]
        return _Shopper(icode[rows], ccode[rows], beh[rows], ts[rows])

    _swap_ineligible(kind_of, perm, shopper)
    pools = _build_pools(icode, ccode, beh, len(cdict))

    new_parts: list[tuple[int, _Shopper]] = []
    for u in perm:
        u = int(u)
        new_parts.append((u, _KIND_FN[kind_of[u]](shopper(u), rng, pools)))

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


def _shuffle_eligible(s: _Shopper) -> bool:
    """Whether shuffle can change this shopper: at least two events that differ."""
    rows = np.stack([s.item, s.cat, s.beh.astype(np.int64)], axis=1)
    return bool(len(rows) > 1 and (rows != rows[0]).any())


_ELIGIBLE: dict[str, Callable[[_Shopper], bool]] = {
    "impossible_order": _order_eligible,
    "shuffle": _shuffle_eligible,
}


def _swap_ineligible(
    kind_of: dict[int, str], perm: np.ndarray, shopper: Callable[[int], _Shopper]
) -> None:
    """Give each order-only kind to shoppers it changes, swapping kinds with shoppers of the other
    kinds (counts stay the same); a shopper no donor can replace keeps its kind."""
    for target, eligible in _ELIGIBLE.items():
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
