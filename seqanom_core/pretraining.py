"""Starting from a pretrained model: what transfers between data sets, and how it is loaded.

A pretrained model directory (``seqanom pretrain``, or any model directory) fixes the model and
tokenizer settings of whatever starts from it. Its weights are copied whole, except the rows that
stand for a hashed category: an event token is a (behaviour, category bucket) pair, and the
bucket of a category id in one data set has nothing to do with the same bucket in another (the
ids are different catalogues). So, by default, every category-specific row of the event-token
embedding, the event head and the head's event conditioning is replaced by the mean of its
behaviour's rows: what transfers is the behaviour (view, cart, fav, buy and the special tokens),
the time-gap buckets, the item states (new, repeated, seen; funnel stages), the backbone, the
history-copy layer and the gap and item heads. ``pool_categories=False`` keeps the rows as they
are (a model pretrained on the same catalogue with the same hash seed). A pre-tokenised source
has one behaviour group: its token rows are pooled into one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from seqanom_core.config import ModelConfig, TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.sequences import N_SPECIAL, SequenceSet

if TYPE_CHECKING:
    from seqanom_core.detector import SequenceDetector
    from seqanom_core.models import NextEventModel

log = logging.getLogger(__name__)

#: state-dict entries whose rows are event tokens (the vocabulary's category-specific part)
EVENT_ROW_ARRAYS: tuple[str, ...] = ("emb.event.weight", "cond.weight", "head_event.weight",
                                     "head_event.bias")
#: what a transferred model keeps, in words (the README and the pretrain command say it)
TRANSFERS = ("behaviours, time-gap buckets, item states, the backbone, the history-copy layer and "
             "the gap and item heads; hashed category buckets do not (their rows start at their "
             "behaviour's mean)")


def load_pretrained(path: str | Path) -> SequenceDetector:
    """The model directory at ``path`` (``builtin``: the model that ships with seqanom,
    ``builtin_model``) on the CPU (a ``ModelFileError`` names what is wrong)."""
    from seqanom_core.builtin_model import resolve
    from seqanom_core.detector import SequenceDetector

    return SequenceDetector.load(resolve(path), device="cpu", progress=False)


def settings_mismatch(pretrained: SequenceDetector, model: ModelConfig,
                      tokenizer: TokenizerConfig) -> str | None:
    """Why a model of ``model``/``tokenizer`` cannot start from ``pretrained`` (None: it can).
    Dropout may differ: it is a training setting."""
    mine = dataclasses.replace(model, dropout=pretrained.model_config.dropout)
    if mine != pretrained.model_config:
        diff = [f"{f.name} {getattr(model, f.name)!r} (pretrained: "
                f"{getattr(pretrained.model_config, f.name)!r})"
                for f in dataclasses.fields(model) if f.name != "dropout"
                and getattr(model, f.name) != getattr(pretrained.model_config, f.name)]
        return "model settings differ: " + ", ".join(diff)
    tok = pretrained.tokenizer_config
    fields = ("category_buckets", "gap_buckets", "token_buckets", "item_states", "session_gap_s")
    diff = [f"{name} {getattr(tokenizer, name)!r} (pretrained: {getattr(tok, name)!r})"
            for name in fields if getattr(tokenizer, name) != getattr(tok, name)]
    return "tokenizer settings differ: " + ", ".join(diff) if diff else None


@torch.no_grad()
def pool_category_rows(model: NextEventModel) -> None:
    """Replace each event token's row by its behaviour group's mean row, in every array of
    ``EVENT_ROW_ARRAYS`` (in place)."""
    groups = int(model.vocab.get("event_groups", 1))
    n_event = model.vocab["event"]
    cats = (n_event - N_SPECIAL) // groups
    state = model.state_dict()
    for name in EVENT_ROW_ARRAYS:
        rows = state[name]
        block = rows[N_SPECIAL:N_SPECIAL + groups * cats]
        shape = (groups, cats, *block.shape[1:])
        mean = block.reshape(shape).mean(1, keepdim=True).expand(shape)
        rows[N_SPECIAL:N_SPECIAL + groups * cats] = mean.reshape(block.shape)


def transfer_weights(model: NextEventModel, pretrained: SequenceDetector,
                     tokenizer: TokenizerConfig, *, pool_categories: bool = True) -> None:
    """Give ``model`` (tokenising with ``tokenizer``) the pretrained weights, in place: all of
    them, with the category rows pooled unless ``pool_categories`` is False. ``ConfigError``
    when the settings differ."""
    problem = settings_mismatch(pretrained, model.config, tokenizer)
    if problem is not None:
        raise ConfigError(f"cannot start from the pretrained model: {problem}")
    if model.vocab != pretrained.network_.vocab:
        raise ConfigError(f"cannot start from the pretrained model: its vocabulary "
                          f"{pretrained.network_.vocab} is not the model's {model.vocab} (was it "
                          f"trained on the other input source?)")
    model.load_state_dict(pretrained.network_.state_dict(), strict=True)
    if pool_categories:
        pool_category_rows(model)
    log.info("started from the pretrained model (%s)", "categories pooled per behaviour"
             if pool_categories else "category rows kept")


def concat_sequences(sets: list[SequenceSet], prefixes: list[str] | None = None) -> SequenceSet:
    """One set of every shopper of ``sets`` (of one source), in order; ``prefixes``: one per set,
    put before its shopper ids (shoppers of different files are different shoppers). Rows into
    the source tables are dropped (they would point into several tables)."""
    import numpy as np

    if not sets:
        raise ConfigError("no sequences to concatenate")
    sources = {s.source for s in sets}
    if len(sources) > 1:
        raise ConfigError(f"cannot pool sequences of different sources {sorted(sources)}")
    prefixes = prefixes or [""] * len(sets)
    if len(prefixes) != len(sets):
        raise ConfigError(f"{len(prefixes)} id prefixes for {len(sets)} sets of sequences")
    ids = np.concatenate([np.char.add(p, s.ids.astype(str))
                          for p, s in zip(prefixes, sets, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([s.lengths for s in sets]))])
    channels = {c: np.concatenate([s.channels[c] for s in sets]) for c in sets[0].channels}
    stamps = ([s.timestamp for s in sets] if all(s.timestamp is not None for s in sets) else None)
    return SequenceSet(ids=ids, offsets=offsets.astype(np.int64), channels=channels,
                       source=sets[0].source,
                       timestamp=None if stamps is None else np.concatenate(stamps))
