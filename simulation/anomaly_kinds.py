"""The anomaly kinds that ``inject_anomalies`` writes into a shopper's history, one function each.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seqanom_core.config import SESSION_GAP_S
from seqanom_core.schema import BEHAVIOR_CODE

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
class Shopper:
    """One shopper's time-ordered events as integer codes."""

    item: np.ndarray
    cat: np.ndarray
    beh: np.ndarray
    ts: np.ndarray


@dataclass
class Pools:
    """Real (item, category) pairs of the table to draw injected events from."""

    item: np.ndarray  # one row per distinct item
    cat: np.ndarray
    weight: np.ndarray  # event count per distinct item
    by_cat_order: np.ndarray  # indexes into item/cat, sorted by category
    cat_start: np.ndarray  # start of each category in by_cat_order
    cat_count: np.ndarray
    hot: np.ndarray  # indexes of high-turnover items (most bought)


def build_pools(item: np.ndarray, cat: np.ndarray, beh: np.ndarray, n_cat: int) -> Pools:
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
    return Pools(uitem, ucat, counts.astype(float), order, cat_start, cat_count, hot)


def _int_gaps(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """Whole-second log-normal gaps (>= 1 s)."""
    return np.maximum(np.round(median * np.exp(sigma * rng.standard_normal(n))), 1.0)


def _seg_len(
    rng: np.random.Generator, n: int, lo_frac: float, hi_frac: float, lo: int, hi: int
) -> int:
    """Segment length: a fraction of the history, clipped to [lo, hi]."""
    return int(np.clip(round(n * rng.uniform(lo_frac, hi_frac)), lo, hi))


def _splice(
    s: Shopper,
    rng: np.random.Generator,
    item: np.ndarray,
    cat: np.ndarray,
    beh: np.ndarray,
    rel_ts: np.ndarray,
    start: int | None = None,
) -> Shopper:
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
    return Shopper(
        np.concatenate([s.item[:a], item, s.item[b:]]),
        np.concatenate([s.cat[:a], cat, s.cat[b:]]),
        np.concatenate([s.beh[:a], beh.astype(np.int8), s.beh[b:]]),
        np.concatenate([s.ts[:a], seg_ts, tail_ts]),
    )


def _rel_times(gaps: np.ndarray) -> np.ndarray:
    """Times relative to a segment start (first event at 0) from gaps between events."""
    return np.concatenate([[0.0], np.cumsum(gaps[1:])]) if gaps.size else gaps


def _sample_in_cats(rng: np.random.Generator, p: Pools, cats: np.ndarray) -> np.ndarray:
    """One item index per entry of ``cats`` (category codes), popularity-weighted."""
    out = np.empty(cats.size, dtype=np.int64)
    for c in np.unique(cats):
        idx = p.by_cat_order[p.cat_start[c] : p.cat_start[c] + p.cat_count[c]]
        w = p.weight[idx] / p.weight[idx].sum()
        sel = cats == c
        out[sel] = rng.choice(idx, size=int(sel.sum()), p=w)
    return out


def _crawler(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """Long fast run of views of many distinct items across the catalogue."""
    m = min(_seg_len(rng, s.ts.size, 0.4, 0.8, 20, 200), p.item.size)
    idx = rng.choice(p.item.size, size=m, replace=False)
    gaps = _int_gaps(rng, m, 2.0, 0.35)
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _VIEW), _rel_times(gaps))


def _cart_stuffing(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """Many cart adds of items of the shopper's own categories, few views, no buys."""
    m = _seg_len(rng, s.ts.size, 0.2, 0.4, 10, 60)
    cats = rng.choice(np.unique(s.cat), size=m)
    idx = _sample_in_cats(rng, p, cats)
    beh = np.where(rng.random(m) < 0.8, _CART, _VIEW)
    gaps = _int_gaps(rng, m, 15.0, 0.8)
    return _splice(s, rng, p.item[idx], p.cat[idx], beh, _rel_times(gaps))


def _account_takeover(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
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


def _bot_replay(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
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


def _click_farm(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """Repeated views of the same few items."""
    m = _seg_len(rng, s.ts.size, 0.3, 0.6, 15, 120)
    k = min(int(rng.integers(2, 5)), int(p.item.size))
    few = rng.choice(p.item.size, size=k, replace=False)
    idx = few[np.arange(m) % k] if rng.random() < 0.5 else rng.choice(few, size=m)
    gaps = _int_gaps(rng, m, 6.0, 0.2)
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _VIEW), _rel_times(gaps))


def _fraud_burst(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """A few buys of high-turnover items never viewed by the shopper, within minutes."""
    m = int(rng.integers(3, 9))
    cand = p.hot[~np.isin(p.item[p.hot], s.item)]
    if cand.size == 0:
        cand = p.hot
    idx = rng.choice(cand, size=m, replace=cand.size < m)
    gaps = np.round(rng.uniform(10.0, 90.0, size=m))
    return _splice(s, rng, p.item[idx], p.cat[idx], np.full(m, _BUY), _rel_times(gaps))


def _funnel_reversal(s: Shopper) -> np.ndarray:
    """Row order that puts each item's rows buy > fav > cart > view over the same slots."""
    n = s.ts.size
    pos = np.arange(n)
    rank = np.select([s.beh == _BUY, s.beh == _FAV, s.beh == _CART], [3, 2, 1], 0)
    slots = np.lexsort((pos, s.item))  # each item's positions, ascending
    rows = np.lexsort((pos, -rank, s.item))  # each item's rows, latest funnel stage first
    new_order = np.empty(n, dtype=np.int64)
    new_order[slots] = rows
    return new_order


def _order_eligible(s: Shopper) -> bool:
    """Whether impossible_order changes anything for this shopper."""
    order = _funnel_reversal(s)
    return bool((s.beh[order] != s.beh).any() or (s.item[order] != s.item).any())


def _impossible_order(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """Same events and timestamps, funnels reversed (buy/cart before the view of the item)."""
    order = _funnel_reversal(s)
    if np.array_equal(order, np.arange(s.ts.size)):
        order = np.arange(s.ts.size)[::-1]  # nothing to reverse: play the history backwards
    return Shopper(s.item[order], s.cat[order], s.beh[order], s.ts.copy())


def _shuffle(s: Shopper, rng: np.random.Generator, p: Pools) -> Shopper:
    """Rows permuted over the kept sorted timestamps."""
    n = s.ts.size
    order = rng.permutation(n)
    if n > 1 and _same_events(s, order):  # e.g. only equal events changed places
        order = np.roll(np.arange(n), 1)  # differs unless every event is the same
    return Shopper(s.item[order], s.cat[order], s.beh[order], s.ts.copy())


def _same_events(s: Shopper, order: np.ndarray) -> bool:
    """Whether reordering by ``order`` leaves the shopper's event sequence unchanged."""
    return bool(np.array_equal(s.item[order], s.item) and np.array_equal(s.cat[order], s.cat)
                and np.array_equal(s.beh[order], s.beh))


KIND_FUNCTIONS = {
    "crawler": _crawler,
    "cart_stuffing": _cart_stuffing,
    "account_takeover": _account_takeover,
    "bot_replay": _bot_replay,
    "click_farm": _click_farm,
    "fraud_burst": _fraud_burst,
    "impossible_order": _impossible_order,
    "shuffle": _shuffle,
}


def _shuffle_eligible(s: Shopper) -> bool:
    """Whether shuffle can change this shopper: at least two events that differ."""
    rows = np.stack([s.item, s.cat, s.beh.astype(np.int64)], axis=1)
    return bool(len(rows) > 1 and (rows != rows[0]).any())


ELIGIBLE: dict[str, Callable[[Shopper], bool]] = {
    "impossible_order": _order_eligible,
    "shuffle": _shuffle_eligible,
}
