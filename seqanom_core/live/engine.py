"""Live scoring: a bounded state per shopper that gives, after every event, the score that batch
scoring (``SequenceDetector.score_shoppers``, ``seqanom score``) gives for the same events.

Why it can be exact with bounded state: batch scoring computes position p's surprise in a window
that starts at ``context_start(p)``, at most ``max_len`` positions back, with a causal model; the
per-shopper statistics are sums, window maxima, the end's surprise and the order statistic, whose
reference reorders complete blocks of ``ORDER_BLOCK`` events (never again once complete). So a
shopper's state is the last ``max_len + 2 * ORDER_BLOCK`` event tokens, the running sums and
maxima, the previous ``WINDOW - 1`` surprises, the items seen (their hashes and furthest funnel
stages, the ``MAX_ITEMS`` most recent), the time and item of the last event, and the few most
surprising events per channel for the explanation. Each event costs one causal pass over its window (events of one
shopper in one batch share it), plus one per reordering when it completes a block.

The one divergence, documented: a shopper's state remembers the ``MAX_ITEMS`` most recently seen
distinct items, so an item seen again after more than that many others reads as a new item (batch
scoring would say "earlier item"); shoppers with fewer distinct items score exactly as in batch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqanom_core.config import Source
from seqanom_core.detector import SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.inference import ORDER_REFERENCES, funnel_buckets, funnel_regressions
from seqanom_core.live.events import LiveEvent, OutOfOrderError
from seqanom_core.live.state import ShopperState, append_event, explain, remember
from seqanom_core.models.network import logits_at
from seqanom_core.scoring import DRIVER_TEXT, WINDOW, StatisticName, stat_names
from seqanom_core.sequences import CHANNELS, END, PAD, SequenceSet, shuffle_within
from seqanom_core.windows import INPUT_START, TARGET_END, split_batch

log = logging.getLogger(__name__)

FORWARD_BATCH = 256  # windows per forward pass
_START = np.array([INPUT_START[c] for c in CHANNELS], dtype=np.int64)
_END = np.array([TARGET_END[c] for c in CHANNELS], dtype=np.int64)


@dataclass
class _Window:
    """One model window to run: positions ``[start, start + length)`` of a shopper, built from
    its tokens (or a reordering of them); scores are wanted from position ``first`` on."""

    array: np.ndarray  # (6, length)
    start: int
    first: int


def _window(tokens: np.ndarray, r0: int, n: int, start: int, first: int, last: int) -> _Window:
    """Inputs and targets of positions ``start..last`` (``last`` <= n) of a shopper with ``n``
    events whose tokens from global index ``r0`` are ``tokens`` ``(3, m)``: position p's input is
    event p - 1 (the start tokens at 0), its target event p (the end tokens at n). Positions
    before ``first`` are context only."""
    pos = np.arange(start, last + 1)
    out = np.zeros((6, len(pos)), dtype=np.int64)
    before = np.clip(pos - 1 - r0, 0, None)
    out[:3] = np.where(pos == 0, _START[:, None], tokens[:, before] if tokens.shape[1] else 0)
    at = np.clip(pos - r0, 0, max(tokens.shape[1] - 1, 0))
    out[3:] = np.where(pos >= n, _END[:, None], tokens[:, at] if tokens.shape[1] else 0)
    return _Window(out, start, first)


class LiveScorer:
    """Scores events as they arrive, shopper by shopper, with the batch scorer's answers.

    ``max_shoppers``: shoppers held at most (the least recently seen are forgotten first);
    ``idle_ttl``: seconds without an event after which a shopper is forgotten (None: never). A
    forgotten shopper who comes back starts afresh, as batch scoring of the new events would.
    Not thread-safe: callers serialise ``score``/``shopper``/``forget`` (the service does).
    """

    def __init__(self, detector: SequenceDetector, *, max_shoppers: int = 100_000,
                 idle_ttl: float | None = None, clock: Any = time.monotonic) -> None:
        detector._check_fitted()
        if detector.source_ != Source.EVENTS:
            raise ConfigError("this model was trained on pre-tokenised input: live scoring takes "
                              "shopper events")
        cal = detector.calibrator_
        if cal.order_block is None:
            raise ConfigError("this model directory was calibrated before live scoring existed "
                              "(its order reference reorders whole histories): retrain it, or "
                              "score its files in batch")
        max_len = detector.network_.config.max_len
        if max_len % 2:
            raise ConfigError(f"live scoring needs an even max_len, not {max_len}")
        if max_shoppers < 1:
            raise ConfigError(f"max_shoppers must be at least 1, not {max_shoppers}")
        if idle_ttl is not None and not idle_ttl > 0:
            raise ConfigError(f"idle_ttl must be a positive number of seconds, not {idle_ttl}")
        self.detector, self.model = detector, detector.network_.eval()
        self.calibrator, self.threshold = cal, float(detector.threshold_)
        self.tok = detector.tokenizer_config
        self.block = int(cal.order_block)
        self.half = max_len // 2
        self.keep = max_len + 2 * self.block  # tokens kept: every context a new position needs
        self.max_shoppers, self.idle_ttl, self.clock = int(max_shoppers), idle_ttl, clock
        self.shoppers: OrderedDict[str, ShopperState] = OrderedDict()
        self.names = np.asarray(cal.names, dtype=object)  # what its drivers index
        # funnel item states: the item:funnel statistic too (stat_names(funnel=True))
        self.funnel = funnel_buckets(self.model.vocab)
        self.n_stats = len(stat_names(funnel=self.funnel is not None))
        self.counters = {"events": 0, "evicted_lru": 0, "evicted_idle": 0, "forgotten": 0}

    # ------------------------------------------------------------------ public
    def context_start(self, p: int) -> int:
        """First position of the window batch scoring computes position ``p`` in."""
        return 0 if p < 2 * self.half else self.half * (p // self.half - 1)

    def check_order(self, events: list[LiveEvent],
                    pending: dict[str, float] | None = None) -> None:
        """``OutOfOrderError`` for the first event older than its shopper's previous one (held
        or earlier in ``events``; ``pending`` carries last times across batches checked
        together and is updated)."""
        last = {} if pending is None else pending
        for i, e in enumerate(events):
            prev = last.get(e.user_id)
            if prev is None and e.user_id in self.shoppers and self.shoppers[e.user_id].n:
                prev = self.shoppers[e.user_id].last_ts
            if prev is not None and e.timestamp < prev:
                raise OutOfOrderError(i, "timestamp", f"shopper {e.user_id!r}: {e.timestamp} is "
                                                      f"older than their last event ({prev})")
            last[e.user_id] = e.timestamp

    def score(self, events: list[LiveEvent]) -> list[dict[str, Any]]:
        """Score ``events`` (checked, each shopper's in time order): one result per event, the
        shopper's score, flag and driver just after it. Raises ``OutOfOrderError`` (and changes
        nothing) when an event is older than its shopper's previous one."""
        self.check_order(events)
        self.evict_idle()
        now = self.clock()
        touched: dict[str, list[int]] = {}
        old_n: dict[str, int] = {}
        for i, e in enumerate(events):
            st = self.shoppers.get(e.user_id)
            if st is None:
                st = self.shoppers[e.user_id] = ShopperState()
            if e.user_id not in touched:
                touched[e.user_id], old_n[e.user_id] = [], st.n
            append_event(st, e, self.tok)
            st.seen = now
            self.shoppers.move_to_end(e.user_id)
            touched[e.user_id].append(i)
        results = self._run(events, touched, old_n)
        self.counters["events"] += len(events)
        while len(self.shoppers) > self.max_shoppers:
            self.shoppers.popitem(last=False)
            self.counters["evicted_lru"] += 1
        return results

    def shopper(self, user_id: str) -> dict[str, Any] | None:
        """The shopper's current score, flag and explanation (None: not held)."""
        st = self.shoppers.get(user_id)
        if st is None:
            return None
        driver = str(self.names[st.driver])
        channel = StatisticName.parse(driver).channel
        return {"user_id": user_id, "events": st.n, "score": st.score,
                "flagged": bool(st.score > self.threshold), "threshold": self.threshold,
                "driver": driver, "driver_text": DRIVER_TEXT.get(channel, channel),
                "top_events": explain(st, channel, self.tok)}

    def forget(self, user_id: str) -> bool:
        """Drop a shopper's state; False when not held."""
        if self.shoppers.pop(user_id, None) is None:
            return False
        self.counters["forgotten"] += 1
        return True

    def evict_idle(self) -> int:
        """Forget shoppers idle for longer than ``idle_ttl``; returns how many."""
        if self.idle_ttl is None:
            return 0
        cutoff, dropped = self.clock() - self.idle_ttl, 0
        while self.shoppers:
            uid, st = next(iter(self.shoppers.items()))
            if st.seen >= cutoff:
                break
            del self.shoppers[uid]
            dropped += 1
        self.counters["evicted_idle"] += dropped
        return dropped

    def flagged_shoppers(self) -> list[str]:
        """Ids of the shoppers held whose current score is above the threshold."""
        return [u for u, st in self.shoppers.items() if st.score > self.threshold]

    # ------------------------------------------------------------------ tokens
    def _trim(self, st: ShopperState) -> None:
        """Drop tokens no later window needs, at a block boundary."""
        drop = ((st.n - self.keep) // self.block) * self.block - st.r0
        if drop > 0:
            st.tokens, st.r0 = st.tokens[:, drop:].copy(), st.r0 + drop

    # ------------------------------------------------------------------ windows
    def _groups(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """Positions ``first..last`` grouped by their context start: (start, first position,
        last position) per group."""
        out: list[tuple[int, int, int]] = []
        for p in range(first, last + 1):
            s = self.context_start(p)
            if out and out[-1][0] == s:
                out[-1] = (s, out[-1][1], p)
            else:
                out.append((s, p, p))
        return out

    def _reordered(self, st: ShopperState, seed: int) -> np.ndarray:
        """The shopper's kept tokens with each complete block reordered as batch scoring does."""
        seqs = SequenceSet(ids=np.array(["s"]), offsets=np.array([0, st.tokens.shape[1]]),
                           channels={c: st.tokens[k].astype(np.int64)
                                     for k, c in enumerate(CHANNELS)}, source=Source.EVENTS)
        shuffled = shuffle_within(seqs, seed=seed, block=self.block)
        return np.stack([shuffled.channels[c] for c in CHANNELS])

    @torch.no_grad()
    def _forward(self, windows: list[_Window]) -> list[dict[str, np.ndarray]]:
        """Per window, at each position from its ``first`` on: NLL per channel, the end's NLL,
        the expected token, its probability, the observed token's and the end's probability."""
        device = next(self.model.parameters()).device
        out: list[dict[str, np.ndarray]] = [{} for _ in windows]
        order = sorted(range(len(windows)), key=lambda k: windows[k].array.shape[1])
        for b0 in range(0, len(order), FORWARD_BATCH):
            chunk = order[b0:b0 + FORWARD_BATCH]
            t = max(windows[k].array.shape[1] for k in chunk)
            arr = np.zeros((len(chunk), 6, t), dtype=np.int64)
            rows, cols, spans = [], [], []
            for r, k in enumerate(chunk):
                w = windows[k]
                arr[r, :, :w.array.shape[1]] = w.array
                wanted = np.arange(w.first - w.start, w.array.shape[1])
                spans.append((len(rows), len(wanted)))
                rows += [r] * len(wanted)
                cols += wanted.tolist()
            inputs, targets = split_batch(torch.from_numpy(arr).to(device))
            r_t, c_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
            logits = logits_at(self.model, inputs, targets["event"], r_t, c_t)
            res = {c: F.cross_entropy(logits[c], targets[c][r_t, c_t], ignore_index=PAD,
                                      reduction="none").float().cpu().numpy() for c in CHANNELS}
            probs = logits["event"].softmax(-1)
            top_p, top_i = probs.max(-1)
            observed = targets["event"][r_t, c_t]
            res["end"] = (-F.log_softmax(logits["event"].float(), -1)[:, END]).cpu().numpy()
            res["expected"], res["expected_prob"] = top_i.cpu().numpy(), top_p.cpu().numpy()
            res["observed_prob"] = probs.gather(-1, observed[:, None])[:, 0].cpu().numpy()
            res["end_prob"] = probs[:, END].cpu().numpy()
            for (at, n), k in zip(spans, chunk, strict=True):
                out[k] = {name: v[at:at + n] for name, v in res.items()}
        return out

    # ------------------------------------------------------------------ scoring
    def _run(self, events: list[LiveEvent], touched: dict[str, list[int]],
             old_n: dict[str, int]) -> list[dict[str, Any]]:
        windows: list[_Window] = []
        plan: dict[str, tuple[list[int], list[tuple[int, list[tuple[int, int, int, int]]]]]] = {}
        for uid in touched:
            st = self.shoppers[uid]
            mine = []
            for s, first, last in self._groups(old_n[uid], st.n):
                mine.append(len(windows))
                windows.append(_window(st.tokens, st.r0, st.n, s, first, last))
            blocks = []
            closed = range(old_n[uid] // self.block, st.n // self.block)
            reordered = [self._reordered(st, seed) for seed in range(ORDER_REFERENCES)
                         if len(closed)]
            for b in closed:
                first, last = b * self.block, (b + 1) * self.block - 1
                refs = []
                for seed in range(ORDER_REFERENCES):
                    for s, lo, hi in self._groups(first, last):
                        refs.append((seed, len(windows), lo, hi))
                        windows.append(_window(reordered[seed], st.r0, st.n, s, lo, hi))
                blocks.append((b, refs))
            plan[uid] = (mine, blocks)
        computed = self._forward(windows)
        rows: list[np.ndarray] = []
        surprises: list[float] = []
        for uid, idx in touched.items():
            st = self.shoppers[uid]
            mine, blocks = plan[uid]
            at: dict[int, tuple[dict[str, np.ndarray], int]] = {}
            for k in mine:
                for j in range(computed[k]["event"].shape[0]):
                    at[windows[k].first + j] = (computed[k], j)
            reference = self._reference(windows, computed, blocks)
            for step, i in enumerate(idx):
                q = old_n[uid] + step  # the event's position: now final
                surprise = self._finalise(st, q, at, events[i])
                if (q + 1) % self.block == 0:
                    self._close_block(st, reference[q // self.block])
                res, j = at[q + 1]
                st.end = (float(res["end"][j]), int(res["expected"][j]),
                          float(res["expected_prob"][j]), float(res["end_prob"][j]))
                rows.append(self._statistics(st, q + 1))
                surprises.append(surprise)
            self._trim(st)
        # one standardisation for every event of the batch, in the order the rows were made
        scores, drivers = self.calibrator.score(np.stack(rows))
        results: list[dict[str, Any]] = [{}] * len(events)
        k = 0
        for uid, idx in touched.items():
            for i in idx:
                score = float(scores[k])
                results[i] = {"user_id": uid, "surprise": surprises[k], "score": score,
                              "flagged": score > self.threshold,
                              "driver": str(self.names[drivers[k]])}
                k += 1
            st = self.shoppers[uid]
            st.score, st.driver = float(scores[k - 1]), int(drivers[k - 1])
        return results

    def _reference(self, windows: list[_Window], computed: list[dict[str, np.ndarray]],
                   blocks: list[tuple[int, list[tuple[int, int, int, int]]]]
                   ) -> dict[int, np.ndarray]:
        """Per completed block: its positions' event NLL under the reorderings, averaged as batch
        scoring averages them (float32)."""
        out = {}
        for b, refs in blocks:
            per_seed = np.zeros((ORDER_REFERENCES, self.block), dtype=np.float32)
            for seed, k, lo, hi in refs:
                per_seed[seed, lo - b * self.block:hi - b * self.block + 1] = computed[k]["event"]
            out[b] = np.mean(per_seed, axis=0).astype(np.float32)
        return out

    def _finalise(self, st: ShopperState, q: int, at: dict, e: LiveEvent) -> float:
        """Position ``q``'s target is now a real event: add its surprise to the state."""
        res, j = at[q]
        event, gap, item = res["event"][j], res["gap"][j], res["item"][j]  # float32 scalars
        # their sum in float32, in the order batch scoring sums the channels
        values = np.array([event, gap, item, event + gap + item], dtype=np.float64)
        st.sums += values
        if len(st.recent) == WINDOW - 1:
            st.wmax = np.maximum(st.wmax, (st.recent.sum(0) + values) / WINDOW)
            st.recent[:-1] = st.recent[1:]
            st.recent[-1] = values
        else:
            st.recent = np.vstack([st.recent, values])
        if len(st.block_nll) != self.block:
            st.block_nll = np.zeros(self.block, dtype=np.float32)
        st.block_nll[q % self.block] = event
        if self.funnel is not None:
            tokens = st.tokens[:, q - st.r0].astype(np.int64)
            if funnel_regressions(tokens[:1], tokens[2:], self.funnel)[0]:
                st.funnel_sum += float(item)
        remember(st, q, values, res, j, e)
        return float(values[3])

    def _close_block(self, st: ShopperState, reference: np.ndarray) -> None:
        """A block is complete: add its order excess (event NLL minus the reordered one)."""
        excess = (st.block_nll - reference).astype(np.float64)
        for v in excess:
            st.order_sum += float(v)

    def _statistics(self, st: ShopperState, n: int) -> np.ndarray:
        """The shopper's statistics after its first ``n`` events (``stat_names(funnel)`` order), as
        ``shopper_statistics`` gives them; ``st`` holds the sums up to there."""
        end = np.array([st.end[0], 0.0, 0.0, st.end[0]])
        totals = st.sums + end
        # per position (n + 1 of them) for event and total; per event for gap and item, whose
        # end position has no target (as shopper_statistics divides)
        denom = np.array([n + 1, max(n, 1), max(n, 1), n + 1], dtype=np.float64)
        means = totals / denom
        if n + 1 <= WINDOW:
            windows = totals / (n + 1)
        else:
            windows = np.maximum(st.wmax, (st.recent.sum(0) + end) / WINDOW)
        out = np.empty(self.n_stats)
        out[0:8:2], out[1:8:2] = means, windows
        out[8], out[9] = st.end[0], st.order_sum / (n + 1)
        if self.funnel is not None:
            out[10] = st.funnel_sum / max(n, 1)
        return out
