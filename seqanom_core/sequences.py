"""Per-shopper time-ordered sequences and their token channels.

Each event becomes three categorical channels:

- ``event``: behaviour x hashed category bucket (``N_SPECIAL + behavior * C + bucket``), or for
  pre-tokenised input the event id folded into ``token_buckets``;
- ``gap``: the bucketed time since the shopper's previous event (first event, new session, or a
  log2-spaced bucket within a session);
- ``item``: the item's state in the shopper's own history (new, same as the previous event,
  seen earlier); with ``TokenizerConfig.item_states = "funnel"``, an item seen before also
  carries the furthest funnel stage the shopper reached on it before this event (viewed,
  carted or faved, bought). This is what makes funnel order (view -> cart -> buy of one item)
  visible without any item vocabulary: the item head predicts the state given the event, so a
  view or cart of an item already bought is one surprising token. Pre-tokenised input has no
  behaviours: its item channel is always "basic".

Hashing uses a fixed keyed hash, so every site maps the same category to the same bucket and no
vocabulary has to be shared.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.config import Source, TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIORS, check_events, encode_values

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("event", "gap", "item")
# event channel specials
PAD, BOS, END = 0, 1, 2
N_SPECIAL = 3
# gap channel values
GAP_PAD, GAP_FIRST, GAP_SESSION, GAP_NONE = 0, 1, 2, 3
GAP_OFFSET = 4
# item channel values
ITEM_PAD, ITEM_NEW, ITEM_SAME, ITEM_REPEAT = 0, 1, 2, 3
ITEM_NAMES = {ITEM_NEW: "new item", ITEM_SAME: "same item again", ITEM_REPEAT: "earlier item"}
# funnel item states: ITEM_SAME or ITEM_REPEAT + 2 * (stage - 1), stage 1..3 the furthest stage
# reached on the item before the event (so stage 1, "viewed", keeps the basic values)
FUNNEL_STAGE = np.array([1, 2, 2, 3], dtype=np.int64)  # per behaviour code: view, cart, fav, buy
FUNNEL_STAGES = ("viewed", "carted or faved", "bought")
ITEM_FUNNEL_NAMES = {ITEM_NEW: "new item", **{
    base + 2 * k: f"{ITEM_NAMES[base]}, already {stage}"
    for k, stage in enumerate(FUNNEL_STAGES) for base in (ITEM_SAME, ITEM_REPEAT)}}


def item_funnel(tok: TokenizerConfig, source: str) -> bool:
    """Whether the item channel carries funnel stages (``item_states`` "funnel", shopper events)."""
    return tok.item_states == "funnel" and source == Source.EVENTS


def item_state_name(state: int, tok: TokenizerConfig, source: str) -> str:
    """Human-readable name of an item-channel token ("" for padding)."""
    names = ITEM_FUNNEL_NAMES if item_funnel(tok, source) else ITEM_NAMES
    return names.get(int(state), "")


def vocab_sizes(tok: TokenizerConfig, source: str) -> dict[str, int]:
    """Return the vocabulary size of each channel for an input source ("events" or "tokens"),
    and ``event_groups``, the number of behaviour blocks in the event vocabulary."""
    if source == "events":
        n_event = N_SPECIAL + len(BEHAVIORS) * tok.category_buckets
    elif source == Source.TOKENS:
        n_event = N_SPECIAL + tok.token_buckets
    else:
        raise ConfigError(f"unknown sequence source {source!r}")
    # event_groups: behaviour blocks of the event vocabulary (the model's history copy needs them)
    groups = len(BEHAVIORS) if source == Source.EVENTS else 1
    n_item = len(ITEM_FUNNEL_NAMES if item_funnel(tok, source) else ITEM_NAMES) + 1  # + ITEM_PAD
    return {"event": n_event, "gap": GAP_OFFSET + tok.gap_buckets, "item": n_item,
            "event_groups": groups}


@dataclass
class SequenceSet:
    """A set of sequences in CSR layout: sequence ``i`` is ``[offsets[i], offsets[i+1])``."""

    ids: np.ndarray  # (n_seq,) shopper / sequence ids as str
    offsets: np.ndarray  # (n_seq + 1,) int64
    channels: dict[str, np.ndarray]  # name -> (n_events,) int64
    source: Source
    timestamp: np.ndarray | None = None  # (n_events,) float64 seconds
    rows: np.ndarray | None = None  # (n_events,) row in the source table, for explanations

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Events per sequence, ``(n_seq,)``."""
        return np.diff(self.offsets)

    @property
    def n_events(self) -> int:
        """Total number of events."""
        return int(self.offsets[-1])

    def subset(self, index: np.ndarray) -> SequenceSet:
        """Return the sequences at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        lengths = ends - starts
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = _ranges(starts, lengths)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[gather]

        return SequenceSet(
            ids=self.ids[index],
            offsets=offsets,
            channels={k: v[gather] for k, v in self.channels.items()},
            source=self.source,
            timestamp=take(self.timestamp),
            rows=take(self.rows),
        )

    def span(self, i: int) -> slice:
        """Slice of the flat event arrays that holds sequence ``i``."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + n)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seq_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - seq_start)


def hash_buckets(values: pa.Array | pa.ChunkedArray, buckets: int, seed: int = 0) -> np.ndarray:
    """Map string values to ``[0, buckets)`` with a keyed BLAKE2b hash, stable across sites."""
    codes, distinct = encode_values(values)
    table = np.fromiter((hash_bucket(v, buckets, seed) for v in distinct), dtype=np.int64,
                        count=len(distinct))
    return table[codes]


def hash_bucket(value: object, buckets: int, seed: int = 0) -> int:
    """One value's bucket in ``[0, buckets)`` (``hash_buckets`` of a single value, by its text)."""
    key = seed.to_bytes(8, "little", signed=False)
    digest = hashlib.blake2b(str(value).encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") % buckets


def gap_bucket(gaps: np.ndarray, tok: TokenizerConfig) -> np.ndarray:
    """Bucket within-session gaps (seconds): bucket k holds gaps in ``[2**(k-1), 2**k)``."""
    b = np.floor(np.log2(np.maximum(gaps, 0.0) + 1.0)).astype(np.int64)
    return GAP_OFFSET + np.clip(b, 0, tok.gap_buckets - 1)


def _item_state(seq_id: np.ndarray, item: np.ndarray, new_seq: np.ndarray,
                stage: np.ndarray | None = None) -> np.ndarray:
    """Item channel of events already grouped by sequence and time-ordered: new / same as
    previous / earlier, and with ``stage`` (each event's funnel stage, 1..3) the furthest stage
    reached on the item by the sequence's earlier events (see ``ITEM_FUNNEL_NAMES``)."""
    n = len(item)
    state = np.full(n, ITEM_REPEAT, dtype=np.int64)
    if n == 0:
        return state
    span = int(item.max()) + 1
    key = seq_id.astype(np.int64) * span + item
    same = np.zeros(n, dtype=bool)
    same[1:] = (item[1:] == item[:-1]) & ~new_seq[1:]
    state[same] = ITEM_SAME
    if stage is None:
        # dictionary codes are handed out in first-seen order: a row is its key's first exactly
        # when its code is above every earlier row's (a hash pass, not a sort)
        codes = pc.dictionary_encode(pa.array(key)).indices.to_numpy(zero_copy_only=False)
        is_first = np.ones(n, dtype=bool)
        is_first[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    else:
        # each (sequence, item)'s events in time order (a stable sort keeps it)
        by_key = np.argsort(key, kind="stable")
        is_first = np.zeros(n, dtype=bool)
        is_first[by_key] = np.concatenate([[True], key[by_key][1:] != key[by_key][:-1]])
        # furthest stage before each event: a running maximum within each key's run (the run
        # number times 4 added keeps the maximum from crossing runs), shifted by one event
        run = np.cumsum(is_first[by_key])
        reached = np.maximum.accumulate(stage[by_key] + 4 * run) - 4 * run
        before = np.zeros(n, dtype=np.int64)
        before[by_key[1:]] = reached[:-1]
        state += 2 * (np.maximum(before, 1) - 1)
    state[is_first] = ITEM_NEW
    return state


def _shopper_time_order(user_codes: np.ndarray, n_users: int, ts: np.ndarray) -> np.ndarray:
    """Rows by shopper (code), then time, then original row. Whole-second times (the usual
    case) sort as one int64 key ``shopper * span + time`` in one stable argsort, about 4x
    faster than ``lexsort``; other times (fractions, NaN, a span too wide) by ``lexsort``."""
    if len(ts):
        lo, hi = float(np.min(ts)), float(np.max(ts))
        span = hi - lo + 1
        if np.isfinite(span) and span * max(n_users, 1) < 2.0**62 and np.array_equal(ts, np.floor(ts)):
            key = user_codes * np.int64(span) + (ts - lo).astype(np.int64)
            return np.argsort(key, kind="stable")
    return np.lexsort((ts, user_codes))  # lexsort is stable: ties keep row order


def build_sequences(events: pa.Table, tok: TokenizerConfig) -> SequenceSet:
    """Group an events table into per-shopper, time-ordered token sequences."""
    events = check_events(events)
    n = events.num_rows
    user_codes, user_ids = encode_values(events.column("user_id"))
    items = events.column("item_id").combine_chunks()
    item_codes = pc.dictionary_encode(items).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ts = events.column("timestamp").to_numpy()
    behavior = events.column("behavior").to_numpy().astype(np.int64)
    cat_bucket = hash_buckets(events.column("category_id"), tok.category_buckets, tok.hash_seed)
    order = _shopper_time_order(user_codes, len(user_ids), ts)
    user_sorted = user_codes[order]
    ts_sorted = ts[order]
    counts = np.bincount(user_sorted, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    new_seq = np.zeros(n, dtype=bool)
    new_seq[offsets[:-1][counts > 0]] = True
    gaps = np.zeros(n)
    gaps[1:] = ts_sorted[1:] - ts_sorted[:-1]
    new_session = new_seq | (gaps > tok.session_gap_s)
    gap = gap_bucket(gaps, tok)
    gap[new_session] = GAP_SESSION
    gap[new_seq] = GAP_FIRST

    event = N_SPECIAL + behavior[order] * tok.category_buckets + cat_bucket[order]
    stage = FUNNEL_STAGE[behavior[order]] if item_funnel(tok, Source.EVENTS) else None
    item = _item_state(user_sorted, item_codes[order], new_seq, stage)
    log.debug("built %d sequences from %d events", len(user_ids), n)
    return SequenceSet(
        ids=user_ids.astype(str),
        offsets=offsets,
        channels={"event": event, "gap": gap, "item": item},
        source=Source.EVENTS,
        timestamp=ts_sorted,
        rows=order.astype(np.int64),
    )


def sequences_from_tokens(ids: list[str], tokens: list[np.ndarray], tok: TokenizerConfig) -> SequenceSet:
    """Build a SequenceSet from pre-tokenised sequences (one int array per sequence)."""
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(tokens).astype(np.int64) if len(tokens) and offsets[-1] else np.zeros(0, np.int64)
    seq_id = np.repeat(np.arange(len(tokens)), lengths)
    new_seq = np.zeros(len(flat), dtype=bool)
    new_seq[offsets[:-1][lengths > 0]] = True
    event = N_SPECIAL + np.mod(flat, tok.token_buckets)
    gap = np.full(len(flat), GAP_NONE, dtype=np.int64)
    gap[new_seq] = GAP_FIRST
    item = _item_state(seq_id, flat - flat.min() if len(flat) else flat, new_seq)
    return SequenceSet(
        ids=np.asarray(ids, dtype=str),
        offsets=offsets,
        channels={"event": event, "gap": gap, "item": item},
        source=Source.TOKENS,
        rows=np.arange(len(flat), dtype=np.int64),
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed uint64 hash of each uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _group_keys(seqs: SequenceSet, seed: int, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The groups a reordering shuffles within, and one pseudo-random uint64 per event.

    A group is a whole sequence (``block`` None) or a run of ``block`` events of one sequence,
    counted from its first event; events of a sequence's last, incomplete block form no group and
    keep their order. An event's key depends only on the seed, its group's own events (their
    tokens, in order) and its place there: not on the other sequences of the set, on where the
    sequence sits in it or, for blocks, on the sequence's later events (so a shopper's reference
    for the events seen so far never changes as more arrive). Returns (group index per event,
    in the order of the flat arrays; key per event)."""
    lengths = seqs.lengths
    pos = np.arange(seqs.n_events, dtype=np.int64) - np.repeat(seqs.offsets[:-1], lengths)
    seq_of = np.repeat(np.arange(len(seqs)), lengths)
    if block is None:
        group, place, in_group = seq_of, pos, np.ones(seqs.n_events, dtype=bool)
    else:
        if block < 2:
            raise ConfigError(f"a reordering block must hold at least 2 events, not {block}")
        complete = np.repeat((lengths // block) * block, lengths)
        in_group = pos < complete
        # one group per block of a sequence, numbered along the flat arrays
        first = np.concatenate([[True], (seq_of[1:] != seq_of[:-1]) | (pos[1:] % block == 0)])
        group, place = np.cumsum(first) - 1, pos % block
    with np.errstate(over="ignore"):
        token = np.zeros(seqs.n_events, dtype=np.uint64)
        for k, c in enumerate(CHANNELS):
            token = _mix64(token ^ (seqs.channels[c].astype(np.uint64) + np.uint64(k + 1)))
        per_event = _mix64(token ^ (place.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
        n_groups = int(group[-1]) + 1 if len(group) else 0
        content = np.zeros(n_groups, dtype=np.uint64)
        if n_groups:  # wrapping sum of the events' hashes: the group's content hash
            starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
            content[group[starts]] = np.add.reduceat(per_event, starts)
        base = _mix64(content ^ np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD6E8FEB86659FD93))
        key = _mix64(base[group] ^ (place.astype(np.uint64) + np.uint64(1))
                     * np.uint64(0x9E3779B97F4A7C15))
    # outside a group, an event keeps its place: its key is its position, and its group its own
    key = np.where(in_group, key, pos.astype(np.uint64))
    return group, key


def shuffle_within(seqs: SequenceSet, seed: int, keep: tuple[str, ...] = ("gap",),
                   block: int | None = None) -> SequenceSet:
    """Each sequence's events in a seeded random order; channels in ``keep`` stay in place.

    With the default, timing stays where it was and only what happened when is reordered: the
    reference against which the order of a shopper's own events is judged. A sequence's order
    depends only on the seed and its own events, so a shopper's score does not change with the
    other shoppers in the file or their order. With ``block``, events are reordered only within
    each complete run of ``block`` events (``_group_keys``): the reference then never changes
    for the events already seen, which is what live scoring needs to match batch scoring.
    """
    group, key = _group_keys(seqs, seed, block)
    order = np.lexsort((key, group))
    channels = {k: v if k in keep else v[order] for k, v in seqs.channels.items()}
    return SequenceSet(ids=seqs.ids, offsets=seqs.offsets, channels=channels, source=seqs.source,
                       timestamp=seqs.timestamp, rows=seqs.rows)


def split_shoppers(seqs: SequenceSet, fraction: float, seed: int) -> tuple[SequenceSet, SequenceSet]:
    """Randomly split sequences into (1 - fraction, fraction) parts by shopper."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction must be in (0, 1), not {fraction}")
    perm = np.random.default_rng(seed).permutation(len(seqs))
    n_b = max(1, int(round(fraction * len(seqs))))
    return seqs.subset(np.sort(perm[n_b:])), seqs.subset(np.sort(perm[:n_b]))


def split_shoppers_by_id(seqs: SequenceSet, fraction: float, seed: int
                         ) -> tuple[SequenceSet, SequenceSet]:
    """Split sequences into (about 1 - fraction, fraction) parts by a seeded hash of each shopper
    id: a shopper's part depends on its own id only, so adding or removing one shopper moves no
    other shopper between the parts (what privacy accounting over both parts needs; a seeded
    permutation reshuffles everyone). Raises ConfigError when a part would be empty."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction must be in (0, 1), not {fraction}")
    key = str(int(seed)).encode("utf-8")
    u = np.array([int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), key=key,
                                                 digest_size=8).digest(), "big") / 2.0**64
                  for i in seqs.ids])
    in_b = u < fraction
    if in_b.all() or not in_b.any():
        raise ConfigError(f"splitting {len(seqs)} shoppers at {fraction} left a part empty: "
                          "too few shoppers")
    return seqs.subset(np.flatnonzero(~in_b)), seqs.subset(np.flatnonzero(in_b))


def split_events_by_shopper(
    events: pa.Table, test_fraction: float, seed: int
) -> tuple[pa.Table, pa.Table]:
    """Split an events table into (train, test) by whole shoppers; a seeded ``test_fraction``."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be in (0, 1), not {test_fraction}")
    users = np.unique(events.column("user_id").to_numpy(zero_copy_only=False))
    n_test = max(1, int(round(test_fraction * len(users))))
    test = np.random.default_rng(seed).choice(users, size=n_test, replace=False)
    is_test = pc.is_in(events.column("user_id"), value_set=pa.array(test.astype(str)))
    return events.filter(pc.invert(is_test)), events.filter(is_test)


def decode_event(token: int, tok: TokenizerConfig, source: str) -> str:
    """Human-readable name of an event-channel token."""
    if token == END:
        return "end of sequence"
    if token < N_SPECIAL:
        return "start"
    t = token - N_SPECIAL
    if source == Source.TOKENS:
        return f"event {t}"
    return f"{BEHAVIORS[t // tok.category_buckets]} in category bucket {t % tok.category_buckets}"
