"""The federation's model as named arrays: one builder for the server and the sites (no Flower here).

The server's global model and a site's copy of it are the same model, built from the run's model
and tokenizer settings and then given the global arrays; ``build_federated_model`` is that one
builder (the server's initial model, checkpoints, and every site round use it).

With run config ``pretrained`` the model starts from that model directory, which the server and
every site read from their own disk (``seqanom_core.pretraining``: what transfers). With
``finetune`` other than ``all`` the global arrays are the trainable ones only (adapters, heads,
event-token embedding: ``seqanom_core.models.finetune``): the frozen pretrained part never travels,
and each message carries only what trains. ``final_network`` folds the adapters in for a model
directory.
``update_problems`` is what the server checks in a site's update before aggregating it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqanom_core.config import Source
from seqanom_core.errors import ConfigError, ModelFileError
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.models import (
    NextEventModel,
    arrays_digest,
    build_model,
    check_arrays,
    load_arrays,
    model_arrays,
)
from seqanom_core.models.finetune import apply_finetune, merge_adapters, trainable_names
from seqanom_core.sequences import vocab_sizes

if TYPE_CHECKING:
    from seqanom_core.detector import SequenceDetector


@functools.lru_cache(maxsize=2)
def _pretrained(path: str, digest: str = "") -> SequenceDetector:
    """The pretrained model directory at ``path`` (read once per process); with ``digest``, its
    weights must be those (``ConfigError`` otherwise: a site with another copy)."""
    from seqanom_core.pretraining import load_pretrained

    try:
        det = load_pretrained(path)
    except ModelFileError as err:
        raise ConfigError(f"run config pretrained {path}: {err}") from err
    found = arrays_digest(model_arrays(det.network_))
    if digest and found != digest:
        raise ConfigError(f"run config pretrained {path}: its weights (digest {found[:12]}) are "
                          f"not the run's pretrained model (pretrained-digest {digest[:12]})")
    return det


def pretrained_digest(path: str) -> str:
    """The identity (``arrays_digest``) of the pretrained model's weights at ``path``."""
    return arrays_digest(model_arrays(_pretrained(path).network_))


def build_federated_model(settings: RunConfig, arrays: dict[str, np.ndarray] | None = None,
                          source: str = Source.EVENTS) -> NextEventModel:
    """The run's model for ``source``'s vocabulary, holding ``arrays`` (None: freshly initialised,
    or the pretrained model), with ``settings.train.finetune``'s parameters trainable."""
    from seqanom_core.pretraining import transfer_weights

    model = build_model(settings.model, vocab_sizes(settings.tokenizer, source))
    if settings.pretrained:
        transfer_weights(model, _pretrained(settings.pretrained, settings.pretrained_digest),
                         settings.tokenizer)
    apply_finetune(model, settings.train.finetune, settings.train.adapter_rank)
    if arrays is not None:
        load_global_arrays(model, arrays, settings)
    return model


def global_arrays(model: NextEventModel, settings: RunConfig) -> dict[str, np.ndarray]:
    """What travels of ``model``: all its arrays, or in a fine-tuning mode the trainable ones."""
    return model_arrays(model, None if settings.train.finetune == "all" else trainable_names(model))


def load_global_arrays(model: NextEventModel, arrays: dict[str, np.ndarray],
                       settings: RunConfig) -> None:
    """Load the global ``arrays`` (``global_arrays``' names) into ``model`` after checking them."""
    load_arrays(model, arrays, None if settings.train.finetune == "all" else trainable_names(model))


def final_network(settings: RunConfig, arrays: dict[str, np.ndarray]) -> NextEventModel:
    """The plain network of the global ``arrays``, adapters folded in: what a model directory
    holds."""
    return merge_adapters(build_federated_model(settings, arrays))


def initial_global_arrays(settings: RunConfig) -> dict[str, np.ndarray]:
    """The first global model's arrays, initialised under the run's seed (same seed, same run),
    or the pretrained model's."""
    torch.manual_seed(settings.train.seed)
    return global_arrays(build_federated_model(settings), settings)


def update_problems(shapes: dict[str, tuple[int, ...]], arrays: dict[str, np.ndarray] | None,
                    metrics: Mapping[str, float]) -> list[str]:
    """Why a site's training update cannot be aggregated (empty: it can): missing arrays, arrays
    with wrong names or shapes or NaN/Inf, or a missing or non-positive ``num-examples``."""
    problems = ["no model arrays"] if arrays is None else check_arrays(shapes, arrays)
    if ("num-examples" not in metrics or not np.isfinite(metrics["num-examples"])
            or metrics["num-examples"] <= 0):
        problems.append("num-examples missing or not positive")
    return problems
