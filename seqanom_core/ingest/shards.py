"""Tokenised shards written by :func:`seqanom_core.ingest.streaming.stream_ingest`, read back
memory-mapped: each shard is a :class:`SequenceSet` whose channels stay on disk, and
:class:`ShardWindows` serves training windows from all of them without loading them whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from seqanom_core.config import Source, TokenizerConfig
from seqanom_core.errors import ConfigError, DataFileError
from seqanom_core.sequences import CHANNELS, SequenceSet
from seqanom_core.windows import window_arrays

MANIFEST = "manifest.json"


def read_manifest(directory: str | Path) -> dict:
    """The ``manifest.json`` of a tokenised-shards directory (one-line error if missing/bad)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        manifest["shards"], manifest["tokenizer"]  # noqa: B018 (required keys)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataFileError(f"{path}: not a tokenised-shards manifest ({type(err).__name__}: "
                            f"{str(err)[:120]})") from None
    return manifest


def shard_tokenizer(directory: str | Path) -> TokenizerConfig:
    """The tokeniser the shards were made with."""
    # shards written before the setting existed hold the basic item states
    return TokenizerConfig(**{"item_states": "basic", **read_manifest(directory)["tokenizer"]})


def load_shard(directory: str | Path, name: str, mmap: bool = True) -> SequenceSet:
    """One tokenised shard as a SequenceSet (channels memory-mapped unless ``mmap`` is False)."""
    d = Path(directory) / name
    try:
        offsets = np.load(d / "offsets.npy")
        channels = {c: np.load(d / f"{c}.npy", mmap_mode="r" if mmap else None) for c in CHANNELS}
        with pa.memory_map(str(d / "ids.arrow")) as src:
            ids = pa.ipc.open_file(src).read_all().column("id").to_numpy(zero_copy_only=False)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataFileError(f"{d}: not a readable tokenised shard ({str(err)[:160]})") from None
    if any(len(v) != offsets[-1] for v in channels.values()) or len(ids) != len(offsets) - 1:
        raise DataFileError(f"{d}: shard arrays disagree in length")
    return SequenceSet(ids=ids.astype(str), offsets=offsets, channels=channels,
                       source=Source.EVENTS)


def load_shards(directory: str | Path, mmap: bool = True) -> list[SequenceSet]:
    """Every shard of a tokenised-shards directory, in manifest order."""
    return [load_shard(directory, s["name"], mmap) for s in read_manifest(directory)["shards"]]


class ShardedSequences:
    """The shards of a tokenised-shards directory, memory-mapped: what ``train_model`` takes
    instead of one in-memory SequenceSet (``len`` is the number of shoppers in all)."""

    def __init__(self, shards: list[SequenceSet]) -> None:
        self.shards = shards

    @classmethod
    def open(cls, directory: str | Path) -> ShardedSequences:
        """Every shard of ``directory``, memory-mapped."""
        return cls(load_shards(directory))

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def n_events(self) -> int:
        """Events in all shards."""
        return sum(int(s.offsets[-1]) for s in self.shards)

    @property
    def source(self) -> str:
        return self.shards[0].source if self.shards else "events"


def split_shards(data: ShardedSequences, fraction: float, seed: int
                 ) -> tuple[ShardedSequences, list[SequenceSet]]:
    """Whole shards held out for calibration (shoppers are hashed to shards, so a shard is a
    random share of them): ``round(fraction x shards)``, at least one, never all; seeded.
    Returns (training shards, held-out shards)."""
    n = len(data.shards)
    if n < 2:
        raise ConfigError("tokenised shards: need at least 2 shards to hold shoppers out for "
                          "the threshold (seqanom tokenize --shards 2 or more)")
    k = min(max(1, round(fraction * n)), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return (ShardedSequences([s for i, s in enumerate(data.shards) if i not in held]),
            [data.shards[i] for i in sorted(held)])


class ShardWindows(Dataset):
    """``ShopperWindows`` over several (memory-mapped) shards: one example per shopper, a random
    window of at most ``max_len`` positions, redrawn per epoch; only the window is read."""

    def __init__(self, shards: list[SequenceSet], max_len: int, seed: int) -> None:
        self.shards, self.max_len, self.seed, self.epoch = shards, max_len, seed, 0
        self.starts = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in shards], out=self.starts[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, sequence in it) of global example ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, i - int(self.starts[s])

    def __getitem__(self, i: int) -> torch.Tensor:
        s, j = self.locate(int(i))
        seqs = self.shards[s]
        n_pos = int(seqs.offsets[j + 1] - seqs.offsets[j]) + 1
        start = 0
        if n_pos > self.max_len:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            start = int(rng.integers(0, n_pos - self.max_len + 1))
        return torch.from_numpy(window_arrays(seqs, j, start, self.max_len))
