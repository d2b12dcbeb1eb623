"""Inference: batched per-event scores of a trained model, and its next-event loss and accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from seqanom_core.models import NextEventModel
from seqanom_core.schema import BEHAVIORS
from seqanom_core.sequences import (
    CHANNELS,
    FUNNEL_STAGE,
    ITEM_FUNNEL_NAMES,
    ITEM_SAME,
    N_SPECIAL,
    SequenceSet,
    shuffle_within,
)
from seqanom_core.windows import channel_nll, split_batch, window_arrays


@dataclass
class EventScores:
    """Per-position scores of a SequenceSet: sequence i has positions ``[offsets[i], offsets[i+1])``.

    A sequence of n events has n + 1 positions (the last one predicts the end of the sequence).
    """

    offsets: np.ndarray  # (n_seq + 1,)
    nll: dict[str, np.ndarray]  # channel -> (n_pos,) float32; gap/item are 0 at the end position
    expected: np.ndarray  # (n_pos,) most likely event token at each position
    expected_prob: np.ndarray  # (n_pos,) its probability
    observed_prob: np.ndarray  # (n_pos,) probability of the observed event token
    # (n_pos,) event-channel NLL when each sequence's events are randomly reordered (timing kept),
    # averaged over the reorderings; None when scored without them
    shuffled_nll: np.ndarray | None = None
    # events per reordering block (``shuffle_within``); None: whole sequences were reordered
    order_block: int | None = None
    # (n_pos,) 1.0 where the event is a funnel regression (``funnel_regressions``), else 0.0;
    # None when the model's item channel carries no funnel stages
    funnel: np.ndarray | None = None


def funnel_buckets(vocab: dict[str, int]) -> int | None:
    """Category buckets per behaviour of a model whose item channel carries funnel stages
    (``item_states`` "funnel" on shopper events), else None."""
    if (vocab.get("item") != len(ITEM_FUNNEL_NAMES) + 1
            or vocab.get("event_groups", 1) != len(BEHAVIORS)):
        return None
    return (int(vocab["event"]) - N_SPECIAL) // len(BEHAVIORS)


def funnel_regressions(event: np.ndarray, item: np.ndarray, buckets: int) -> np.ndarray:
    """Per event (funnel item states): whether it is a *funnel regression*, an event whose stage
    (view < cart or fav < buy) is below the furthest stage the shopper had already reached on
    its item (a view of an item already carted, a cart of an item already bought). Padding and
    special tokens are not."""
    event, item = np.asarray(event, dtype=np.int64), np.asarray(item, dtype=np.int64)
    behaviour = np.clip((event - N_SPECIAL) // buckets, 0, len(BEHAVIORS) - 1)
    reached = np.where(item >= ITEM_SAME, (item - ITEM_SAME) // 2 + 1, 0)
    return (event >= N_SPECIAL) & (FUNNEL_STAGE[behaviour] < reached)


ORDER_REFERENCES = 2  # random reorderings per sequence scored as the order reference
#: Events per reordering block of the order reference: each complete run of this many events is
#: reordered on its own, so the reference of the events seen so far never changes as a shopper's
#: later events arrive (live scoring gives the batch score after every event). Model directories
#: written before it reordered whole sequences, and keep doing so (ScoreCalibrator.order_block).
ORDER_BLOCK = 8


@torch.no_grad()
def score_events(
    model: NextEventModel, seqs: SequenceSet, device: torch.device, *, batch_size: int = 128,
    progress: bool = True, reorderings: int = ORDER_REFERENCES,
    order_block: int | None = ORDER_BLOCK,
) -> EventScores:
    """Negative log-likelihood of every event (and of each sequence's end) per channel.

    With ``reorderings`` > 0, also the event NLL of that many seeded random reorderings of each
    sequence (``shuffled_nll``; within blocks of ``order_block`` events, or whole sequences when
    None), the reference for how much a shopper's order itself tells.
    """
    shuffled = None
    if reorderings > 0:
        shuffled = np.mean([
            score_events(model, shuffle_within(seqs, seed=k, block=order_block), device,
                         batch_size=batch_size, progress=progress, reorderings=0).nll["event"]
            for k in range(reorderings)
        ], axis=0).astype(np.float32)
    model.to(device).eval()
    L = model.config.max_len
    half = L // 2
    lengths = seqs.lengths
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    n_pos = int(offsets[-1])
    nll = {c: np.zeros(n_pos, dtype=np.float32) for c in CHANNELS}
    expected = np.zeros(n_pos, dtype=np.int64)
    expected_prob = np.zeros(n_pos, dtype=np.float32)
    observed_prob = np.zeros(n_pos, dtype=np.float32)
    # windows (seq, start, keep_from): positions before keep_from were scored with more context
    windows: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        p = int(n) + 1
        windows.append((i, 0, 0))
        start = half
        while start + half < p and p > L:
            windows.append((i, start, start + half))
            start += half
    for b0 in tqdm(range(0, len(windows), batch_size), desc="score", disable=not progress or None,
                   leave=False):
        chunk = windows[b0:b0 + batch_size]
        arr = torch.from_numpy(np.stack([window_arrays(seqs, i, s, L) for i, s, _ in chunk]))
        inputs, targets = split_batch(arr.to(device))
        parts, logits = channel_nll(model, inputs, targets)
        probs = logits["event"].softmax(-1)
        top_p, top_i = probs.max(-1)
        obs_p = probs.gather(-1, targets["event"].unsqueeze(-1)).squeeze(-1)
        parts_np = {c: v.float().cpu().numpy() for c, v in parts.items()}
        top_p_np, top_i_np, obs_p_np = top_p.cpu().numpy(), top_i.cpu().numpy(), obs_p.cpu().numpy()
        t_max = parts_np["event"].shape[1]
        for r, (i, s, keep) in enumerate(chunk):
            p = int(lengths[i]) + 1
            lo, hi = keep, min(s + t_max, s + L, p)
            if hi <= lo:
                continue
            src = slice(lo - s, hi - s)
            dst = slice(int(offsets[i]) + lo, int(offsets[i]) + hi)
            for c in CHANNELS:
                nll[c][dst] = parts_np[c][r, src]
            expected[dst], expected_prob[dst] = top_i_np[r, src], top_p_np[r, src]
            observed_prob[dst] = obs_p_np[r, src]
    funnel = None
    buckets = funnel_buckets(model.vocab)
    if buckets is not None:
        funnel = np.zeros(n_pos, dtype=np.float32)
        seq_of = np.repeat(np.arange(len(lengths)), lengths)
        funnel[np.arange(seqs.n_events) + seq_of] = funnel_regressions(
            seqs.channels["event"], seqs.channels["item"], buckets)
    return EventScores(offsets, nll, expected, expected_prob, observed_prob, shuffled,
                       order_block if shuffled is not None else None, funnel)


def next_event_metrics(scores: EventScores) -> dict[str, float]:
    """Mean next-event loss (all channels, per position) and top-1 event accuracy."""
    n = len(scores.expected)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    total = sum(scores.nll[c].astype(np.float64) for c in CHANNELS)
    hit = scores.observed_prob >= scores.expected_prob
    return {"loss": float(np.mean(total)), "accuracy": float(np.mean(hit))}
