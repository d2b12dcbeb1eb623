"""Model windows of shopper sequences: what training and scoring feed the network.

A sequence of n events has n + 1 positions (the last one predicts the end of the sequence); a
window is a run of at most ``max_len`` of them, as 3 input and 3 target channels. Also the
per-position loss of a batch of windows, which training minimises and scoring reports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from seqanom_core.models import NextEventModel
from seqanom_core.sequences import (
    BOS,
    CHANNELS,
    END,
    GAP_PAD,
    ITEM_PAD,
    PAD,
    SequenceSet,
)

#: position 0's input and the end position's target, per channel
INPUT_START = {"event": BOS, "gap": GAP_PAD, "item": ITEM_PAD}
TARGET_END = {"event": END, "gap": PAD, "item": PAD}


def window_arrays(seqs: SequenceSet, i: int, start: int, length: int) -> np.ndarray:
    """Input and target channels for positions ``[start, start+length)`` of sequence ``i``.

    A sequence of n events has n + 1 positions: position p's input is event p-1 (BOS at 0) and
    its target is event p (END at n). Returns ``(6, length)`` int64: 3 input rows then 3 targets.
    """
    sl = seqs.span(i)
    n = sl.stop - sl.start
    out = np.zeros((6, length), dtype=np.int64)
    pos = np.arange(start, start + length)
    valid = pos <= n
    for k, c in enumerate(CHANNELS):
        ch = seqs.channels[c][sl]
        inp = np.where(pos == 0, INPUT_START[c], ch[np.clip(pos - 1, 0, max(n - 1, 0))] if n else 0)
        tgt = np.where(pos >= n, TARGET_END[c], ch[np.clip(pos, 0, max(n - 1, 0))] if n else 0)
        out[k] = np.where(valid, inp, 0)
        out[3 + k] = np.where(valid, tgt, 0)
    return out


class ShopperWindows(Dataset):
    """One example per shopper: a random window of at most ``max_len`` positions, redrawn per epoch."""

    def __init__(self, seqs: SequenceSet, max_len: int, seed: int) -> None:
        self.seqs, self.max_len, self.seed, self.epoch = seqs, max_len, seed, 0

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> torch.Tensor:
        n_pos = int(self.seqs.lengths[i]) + 1
        start = 0
        if n_pos > self.max_len:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            start = int(rng.integers(0, n_pos - self.max_len + 1))
        return torch.from_numpy(window_arrays(self.seqs, i, start, self.max_len))


def split_batch(batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(batch, 6, time)`` -> (inputs, targets), trimmed to the longest real window."""
    valid = batch[:, 3] != PAD
    t = int(valid.any(0).nonzero().max()) + 1 if bool(valid.any()) else 1
    batch = batch[:, :, :t]
    inputs = {c: batch[:, k] for k, c in enumerate(CHANNELS)}
    targets = {c: batch[:, 3 + k] for k, c in enumerate(CHANNELS)}
    return inputs, targets


def channel_nll(
    model: NextEventModel, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-position negative log-likelihood per channel ``(batch, time)``, and the logits."""
    logits = model(inputs, targets["event"])
    nll = {
        c: F.cross_entropy(logits[c].transpose(1, 2), targets[c], ignore_index=PAD, reduction="none")
        for c in CHANNELS
    }
    return nll, logits
