"""A simulation that starts from a pretrained model (``simulate --pretrained DIR``): the model and
tokenizer settings it takes from the model directory, and the run config keys that carry it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqanom_core.config import DetectorConfig
from seqanom_core.errors import ConfigError


def pretrained_config(path: str | Path) -> DetectorConfig:
    """The settings of the model directory at ``path`` (``builtin``: the one that ships with
    seqanom) from its ``config.json`` (one-line errors)."""
    from seqanom_core.builtin_model import resolve

    file = resolve(path) / "config.json"
    try:
        raw = json.loads(file.read_text())
        raw.pop("vocab", None)
        return DetectorConfig.from_dict(raw)
    except (OSError, ValueError, AttributeError, ConfigError) as err:
        raise ConfigError(f"--pretrained {path}: not a model directory ({file}: {err})") from None


def simulation_fields(path: str | Path) -> dict[str, Any]:
    """The ``SimulationConfig`` fields a pretrained model fixes (its model's shape)."""
    cfg = pretrained_config(path)
    m = cfg.model
    return {"model": m.kind, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "max_len": m.max_len, "history_copy": m.history_copy,
            "item_states": cfg.tokenizer.item_states}


def pretrained_run_config(path: str, finetune: str, adapter_rank: int) -> dict[str, Any]:
    """Run config keys of a run from the pretrained model at ``path``: the path, its weights'
    digest (every site checks its copy), the fine-tuning mode, and the model and tokenizer
    settings it was built with."""
    from seqanom_core.federation.global_model import pretrained_digest

    cfg = pretrained_config(path)
    m, t = cfg.model, cfg.tokenizer
    return {"pretrained": path, "pretrained-digest": pretrained_digest(path),
            "finetune": finetune, "adapter-rank": adapter_rank,
            "model": m.kind, "d-model": m.d_model, "n-layers": m.n_layers, "n-heads": m.n_heads,
            "max-len": m.max_len, "history-copy": m.history_copy,
            "category-buckets": t.category_buckets, "gap-buckets": t.gap_buckets,
            "session-gap-s": t.session_gap_s, "item-states": t.item_states}
