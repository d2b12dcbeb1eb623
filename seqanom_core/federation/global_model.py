"""The federation's model as named arrays: one builder for the server and the sites (no Flower here).

The server's global model and a site's copy of it are the same model, built from the run's model
and tokenizer settings and then given the global arrays; ``build_federated_model`` is that one
builder (the server's initial model, checkpoints, and every site round use it).
``update_problems`` is what the server checks in a site's update before aggregating it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from seqanom_core.config import Source
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.models import NextEventModel, build_model, check_arrays, load_arrays, model_arrays
from seqanom_core.sequences import vocab_sizes


def build_federated_model(settings: RunConfig, arrays: dict[str, np.ndarray] | None = None,
                          source: str = Source.EVENTS) -> NextEventModel:
    """The run's model for ``source``'s vocabulary, holding ``arrays`` (None: freshly initialised)."""
    model = build_model(settings.model, vocab_sizes(settings.tokenizer, source))
    if arrays is not None:
        load_arrays(model, arrays)
    return model


def initial_global_arrays(settings: RunConfig) -> dict[str, np.ndarray]:
    """The first global model's arrays, initialised under the run's seed (same seed, same run)."""
    torch.manual_seed(settings.train.seed)
    return model_arrays(build_federated_model(settings))


def update_problems(shapes: dict[str, tuple[int, ...]], arrays: dict[str, np.ndarray] | None,
                    metrics: Mapping[str, float]) -> list[str]:
    """Why a site's training update cannot be aggregated (empty: it can): missing arrays, arrays
    with wrong names or shapes or NaN/Inf, or a missing or non-positive ``num-examples``."""
    problems = ["no model arrays"] if arrays is None else check_arrays(shapes, arrays)
    if ("num-examples" not in metrics or not np.isfinite(metrics["num-examples"])
            or metrics["num-examples"] <= 0):
        problems.append("num-examples missing or not positive")
    return problems
