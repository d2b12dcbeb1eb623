"""Typed, frozen configuration of tokenisation, model, training and differential privacy."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from seqanom_core.errors import ConfigError


class Source(StrEnum):
    """What sequences were built from: shopper events (the event schema) or a pre-tokenised file.
    Equal to its plain string ("events", "tokens"), which is how model files store it."""

    EVENTS = "events"
    TOKENS = "tokens"


def is_positive_number(value: float) -> bool:
    """A finite number above 0 (NaN and infinities are not: a NaN budget or rate passes every
    comparison check unnoticed)."""
    return math.isfinite(value) and value > 0


def _check_positive_int(name: str, value: int, most: int | None = None) -> None:
    """Reject a count below 1, or above ``most`` when given (one line, naming the setting)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    if most is not None and value > most:
        raise ConfigError(f"{name} must be at most {most:,}, not {value:,}")


# Upper limits of the settings that size a model. A model directory's config.json is read
# before any weight is allocated: without them a tampered file (n_layers 10**6, max_len 10**9)
# makes a command allocate until the machine runs out of memory. Each is far above real use
# (the defaults are d_model 64, 2 layers, 4 heads, 128 positions, 64 category buckets).
MAX_D_MODEL = 4096
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_LEN = 8192  # positions of a window (the Transformer holds one embedding per position)
MAX_CATEGORY_BUCKETS = 1 << 20  # per behaviour: an event vocabulary of about 4.2 million
MAX_TOKEN_BUCKETS = 1 << 22  # pre-tokenised input: an event vocabulary of about 4.2 million
MAX_GAP_BUCKETS = 1024  # log2-spaced: 64 already span more than the age of the universe
#: The most parameters a model may have (2 GiB of float32 weights), whatever its settings: a
#: model within every limit above can still be far larger (64 layers of width 4096: 12.9e9).
MAX_PARAMETERS = 1 << 29


SESSION_GAP_S = 1800.0  # default: a gap between two events longer than this starts a new session
#: What the item channel tells of an event's item (seqanom_core/sequences.py): "basic" (new,
#: same as the previous event, seen earlier) or "funnel" (also, for an item seen before, the
#: furthest funnel stage the shopper reached on it: viewed, carted or faved, bought)
ITEM_STATES: tuple[str, ...] = ("basic", "funnel")


@dataclass(frozen=True)
class TokenizerConfig:
    """How events become model tokens (fixed-size hashing: nothing is shared between sites)."""

    category_buckets: int = 64  # hashed category buckets per behaviour
    gap_buckets: int = 14  # log2-spaced within-session time-gap buckets
    session_gap_s: float = SESSION_GAP_S  # a gap longer than this starts a new session
    token_buckets: int = 512  # pre-tokenised format: event ids are folded into this many buckets
    hash_seed: int = 0  # seed of the category hash (all sites must use the same)
    # ITEM_STATES; model directories written before it existed load with "basic"
    item_states: str = "basic"

    def __post_init__(self) -> None:
        for name, most in (("category_buckets", MAX_CATEGORY_BUCKETS),
                           ("gap_buckets", MAX_GAP_BUCKETS), ("token_buckets", MAX_TOKEN_BUCKETS)):
            _check_positive_int(name, getattr(self, name), most)
        if not is_positive_number(self.session_gap_s):
            raise ConfigError(f"session_gap_s (the session gap) must be a positive number of "
                              f"seconds, not "
                              f"{self.session_gap_s}")
        if self.hash_seed < 0:
            raise ConfigError(f"hash_seed must be 0 or more, not {self.hash_seed}")
        if self.item_states not in ITEM_STATES:
            raise ConfigError(f"item_states must be one of {', '.join(ITEM_STATES)}, "
                              f"not {self.item_states!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the next-event network."""

    kind: str = "transformer"  # any registered backbone (seqanom_core/models/registry.py)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    max_len: int = 128  # window length (positions) the model sees at once
    # copy term from the shopper's own history in the event logits (see models/network.py); model
    # directories written before it existed load with False
    history_copy: bool = True

    def __post_init__(self) -> None:
        for name, most in (("d_model", MAX_D_MODEL), ("n_layers", MAX_LAYERS),
                           ("n_heads", MAX_HEADS), ("max_len", MAX_LEN)):
            _check_positive_int(name, getattr(self, name), most)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        # the backbone registry imports torch and the backbones: only when a config is made
        from seqanom_core.models.registry import get_backbone

        get_backbone(self.kind).check_config(self)  # ConfigError for unknown kinds too
        if self.max_len < 8:
            raise ConfigError(f"max_len must be at least 8, not {self.max_len}")
        if not isinstance(self.history_copy, bool):
            raise ConfigError(f"history_copy must be true or false, not {self.history_copy!r}")


#: Model sizes of ``seqanom pretrain --size``: (d_model, n_layers, n_heads). "tiny" is the model of
#: ``seqanom simulate``, "small" the default ModelConfig (``seqanom train``); "base" has twice
#: small's width and depth (about 8x its backbone's parameters), for a GPU
MODEL_SIZES: dict[str, tuple[int, int, int]] = {"tiny": (32, 2, 4), "small": (64, 2, 4),
                                                "base": (128, 4, 8)}

#: Opacus accountants a DP training can be accounted with (Opacus' ``PrivacyEngine`` names).
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: The most noise (multiplier) a training call may plan for its budget: with more it declines
#: (a federated site) or trains nothing (``seqanom train --dp``). Was 50 for sites only; at the
#: simulate defaults epsilon 8 needs about 1, and at 10 a batch of 16 shoppers' clipped
#: gradients is drowned by noise of 10/16 of the clip in every coordinate: such a model learns
#: next to nothing while it still spends the budget.
MAX_NOISE = 10.0


@dataclass(frozen=True)
class DPConfig:
    """Opacus DP-SGD settings; one example is one shopper (one window per shopper per step)."""

    # target epsilon for this training call (cumulative budget); with noise_multiplier too, the
    # budget that fixed noise must fit in (the same accountant decides)
    epsilon: float | None = None
    delta: float | None = None  # default: 1 / (10 * number of shoppers), capped at 1e-5
    noise_multiplier: float | None = None  # alternative to epsilon
    max_grad_norm: float = 1.0
    # DP-SGD's randomness (Poisson sampling of shoppers, Gaussian noise). None (default): seeded
    # from the OS at every training call, so nobody can predict it. A seed makes a run
    # reproducible, and its noise removable by whoever knows the seed: for experiments only.
    seed: int | None = None
    accountant: str = "rdp"  # Opacus' "rdp" or "prv" (tighter: less noise for the same epsilon)
    max_noise: float = MAX_NOISE  # refuse to train rather than need (or be given) more noise

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, "
                              f"not {self.accountant!r}")
        if not is_positive_number(self.max_noise):
            raise ConfigError(f"max noise must be a positive number, not {self.max_noise}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ConfigError(f"DP seed must be a non-negative integer, not {self.seed!r}")
        if self.epsilon is None and self.noise_multiplier is None:
            raise ConfigError("DP needs epsilon (a budget) or noise_multiplier (or both)")
        if self.epsilon is not None and not is_positive_number(self.epsilon):
            raise ConfigError(f"epsilon must be a positive number, not {self.epsilon}")
        if self.noise_multiplier is not None and not is_positive_number(self.noise_multiplier):
            raise ConfigError(f"noise multiplier must be a positive number, not "
                              f"{self.noise_multiplier}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), not {self.delta}")
        if not is_positive_number(self.max_grad_norm):
            raise ConfigError(f"max_grad_norm must be positive, not {self.max_grad_norm}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training call."""

    epochs: int = 8
    batch_size: int = 64  # expected batch size (Poisson sampling under DP)
    lr: float = 1e-2  # peak learning rate
    # "adamw" (default), or "sgd" (plain SGD: what federated sites use, see run_config.py)
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"  # or "constant"; cosine: 5% linear warm-up, then decay to 10%
    weight_decay: float = 0.0
    calibration_fraction: float = 0.2  # shoppers held out of training to calibrate scores
    alert_rate: float = 0.05  # target fraction of normal shoppers flagged
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    dp: DPConfig | None = None
    # FINETUNE_MODES: which parameters train (seqanom_core/models/finetune.py); other than "all"
    # only when starting from a pretrained model
    finetune: str = "all"
    adapter_rank: int = 8  # rank of the low-rank adapters (finetune "adapters")

    def __post_init__(self) -> None:
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        if not is_positive_number(self.lr):
            raise ConfigError(f"lr (the learning rate) must be a positive number, not {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be 0 or more, not {self.weight_decay}")
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or more, not {self.seed}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"not {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"not {self.lr_schedule!r}")
        if not 0 < self.calibration_fraction < 1:
            raise ConfigError(f"calibration_fraction must be in (0, 1), not "
                              f"{self.calibration_fraction}")
        if not 0 < self.alert_rate < 1:
            raise ConfigError(f"alert_rate must be in (0, 1), not {self.alert_rate}")
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"finetune must be one of {', '.join(FINETUNE_MODES)}, "
                              f"not {self.finetune!r}")
        _check_positive_int("adapter_rank", self.adapter_rank, 4096)


LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
#: which parameters a training call trains (seqanom_core/models/finetune.py): every one, low-rank
#: adapters + heads + event-token embedding, or heads + event-token embedding only
FINETUNE_MODES: tuple[str, ...] = ("all", "adapters", "head")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector (saved as JSON beside the weights)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: Source = Source.EVENTS

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Rebuild from ``to_dict`` output, rejecting unknown keys."""
        try:
            train = dict(data.get("train", {}))
            dp = train.pop("dp", None)
            return cls(
                tokenizer=TokenizerConfig(**{"item_states": "basic", **data.get("tokenizer", {})}),
                model=ModelConfig(**{"history_copy": False, **data.get("model", {})}),
                train=TrainConfig(**train, dp=DPConfig(**dp) if dp else None),
                source=Source(data.get("source", Source.EVENTS)),
            )
        except TypeError as err:
            raise ConfigError(f"invalid detector configuration: {err}") from err
