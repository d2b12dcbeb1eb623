"""What live scoring keeps of one shopper: tokens as ``build_sequences`` makes them, running
statistics, and the few events an explanation names (see ``seqanom_core.live.engine``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from seqanom_core.config import Source, TokenizerConfig
from seqanom_core.live.events import LiveEvent
from seqanom_core.schema import BEHAVIORS
from seqanom_core.scoring import STAT_CHANNELS
from seqanom_core.sequences import (
    FUNNEL_STAGE,
    GAP_FIRST,
    GAP_OFFSET,
    GAP_SESSION,
    ITEM_NEW,
    ITEM_REPEAT,
    ITEM_SAME,
    N_SPECIAL,
    decode_event,
    hash_bucket,
    item_funnel,
    item_state_name,
)

MAX_ITEMS = 512  # distinct items remembered per shopper, the most recently seen (9 bytes each)
EXPLAIN_TOP = 3  # most surprising events kept per channel for the explanation


class ShopperState:
    """What live scoring keeps of one shopper (see the module docstring)."""

    __slots__ = ("n", "r0", "tokens", "last_ts", "last_item", "items", "stages", "sums", "wmax",
                 "recent",
                 "block_nll", "order_sum", "funnel_sum", "end", "top", "details", "score", "driver",
                 "seen")

    def __init__(self) -> None:
        self.n = 0  # events so far
        self.r0 = 0  # global index of tokens[:, 0] (a multiple of ORDER_BLOCK)
        self.tokens = np.zeros((3, 0), dtype=np.int16)  # event, gap, item tokens from r0
        self.last_ts = 0.0
        self.last_item = 0
        self.items = np.zeros(0, dtype=np.int64)  # hashes of the items seen, by recency
        self.stages = np.zeros(0, dtype=np.int8)  # furthest funnel stage reached on each of them
        self.sums = np.zeros(len(STAT_CHANNELS))  # per stat channel, over finalised positions
        self.wmax = np.full(len(STAT_CHANNELS), -np.inf)  # largest closed-window mean
        self.recent = np.zeros((0, len(STAT_CHANNELS)))  # last WINDOW - 1 finalised positions
        self.block_nll = np.zeros(0, dtype=np.float32)  # event NLL of the open block's positions
        # (made ORDER_BLOCK long at the first event)
        self.order_sum = 0.0
        self.funnel_sum = 0.0  # item NLL of the funnel regressions (funnel item states)
        # the end position: event NLL (of the end), expected token, its probability, P(end)
        self.end = (0.0, 0, 0.0, 0.0)
        # per channel (event, gap, item, total): up to EXPLAIN_TOP (surprise, position)
        self.top: list[list[tuple[float, int]]] = [[], [], [], []]
        self.details: dict[int, tuple] = {}  # position -> what the explanation names
        self.score, self.driver, self.seen = 0.0, 0, 0.0



def append_event(st: ShopperState, e: LiveEvent, tok: TokenizerConfig) -> None:
    """Tokenise ``e`` as ``build_sequences`` would after the shopper's events so far."""
    c = tok.category_buckets
    event = N_SPECIAL + e.behavior * c + hash_bucket(e.category_id, c, tok.hash_seed)
    if st.n == 0:
        gap = GAP_FIRST
    elif e.timestamp - st.last_ts > tok.session_gap_s:
        gap = GAP_SESSION
    else:
        # gap_bucket's arithmetic on one value
        bucket = int(np.floor(np.log2(max(e.timestamp - st.last_ts, 0.0) + 1.0)))
        gap = GAP_OFFSET + min(max(bucket, 0), tok.gap_buckets - 1)
    key = hash(e.item_id) & 0x7FFF_FFFF_FFFF_FFFF
    at = np.flatnonzero(st.items == key)
    seen = at.size > 0
    item = ITEM_NEW if not seen else ITEM_SAME if st.n and key == st.last_item else ITEM_REPEAT
    stage = int(FUNNEL_STAGE[e.behavior])
    if seen:
        before = int(st.stages[at[0]])
        if item_funnel(tok, Source.EVENTS):  # as sequences._item_state
            item += 2 * (before - 1)
        stage = max(stage, before)
    # the items seen, least recently seen first; beyond MAX_ITEMS the oldest is forgotten
    keep = (lambda a: np.delete(a, at)) if seen else (lambda a: a[-(MAX_ITEMS - 1):])
    st.items = np.append(keep(st.items), np.int64(key))
    st.stages = np.append(keep(st.stages), np.int8(stage))
    st.tokens = np.concatenate([st.tokens, np.array([[event], [gap], [item]], np.int16)], 1)
    st.last_ts, st.last_item = e.timestamp, key
    st.n += 1


def remember(st: ShopperState, q: int, values: np.ndarray, res: dict, j: int,
              e: LiveEvent) -> None:
    """Keep position ``q`` among each channel's most surprising, with what names it."""
    kept = False
    for c in range(len(STAT_CHANNELS)):
        top = st.top[c]
        v = float(values[c])
        if len(top) < EXPLAIN_TOP or v > top[-1][0]:
            top.append((v, q))
            top.sort(key=lambda x: (-x[0], x[1]))
            del top[EXPLAIN_TOP:]
            kept = kept or any(p == q for _, p in top)
    if kept:
        event_token = int(st.tokens[0, q - st.r0])
        st.details[q] = (int(res["expected"][j]), float(res["expected_prob"][j]),
                         float(res["observed_prob"][j]), event_token,
                         int(st.tokens[2, q - st.r0]), e.timestamp, e.behavior, e.item_id,
                         e.category_id)
    live = {p for top in st.top for _, p in top}
    for p in [p for p in st.details if p not in live]:
        del st.details[p]


def explain(st: ShopperState, channel: str, tok: TokenizerConfig) -> list[dict[str, Any]]:
    """The events that drove the score, as ``SequenceDetector.explain`` names them."""
    source = Source.EVENTS
    end_value = st.end[0]
    if channel == "end":
        ranked = [(end_value, st.n)]
    else:
        c = {"order": 0, "event": 0, "gap": 1, "item": 2, "total": 3}[channel]
        ranked = list(st.top[c])
        if c in (0, 3):  # the end position counts for the event and total channels
            ranked.append((end_value, st.n))
        ranked = sorted(ranked, key=lambda x: (-x[0], x[1]))[:EXPLAIN_TOP]
    rows = []
    for value, p in sorted(ranked, key=lambda x: x[1]):
        if p == st.n:
            _, expected, expected_prob, end_prob = st.end
            rows.append({"position": p, "surprise": round(value, 3),
                         "expected": decode_event(expected, tok, source),
                         "expected_prob": round(expected_prob, 4),
                         "observed_prob": round(end_prob, 4), "observed": "end of sequence"})
            continue
        (expected, expected_prob, observed_prob, _, item, ts, behavior, item_id,
         category_id) = st.details[p]
        rows.append({"position": p, "surprise": round(value, 3),
                     "expected": decode_event(expected, tok, source),
                     "expected_prob": round(expected_prob, 4),
                     "observed_prob": round(observed_prob, 4),
                     "observed": f"{BEHAVIORS[behavior]} item {item_id} category {category_id}",
                     "item_state": item_state_name(item, tok, source), "timestamp": ts})
    return rows
