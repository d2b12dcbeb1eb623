"""Typed federation settings, built from a flat kebab-case run config in one function.

The same dict comes from Flower's run config (``[tool.flwr.app.config]`` in pyproject.toml,
``flwr run --run-config``) or from ``seqanom simulate``. Unknown keys are rejected with the list
of known ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from seqanom_core.config import (
    MAX_NOISE,
    DPConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    is_positive_number,
)
from seqanom_core.errors import ConfigError

CALIBRATION_SHOPPERS = ("auto", "validation", "all")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
PRIVACY_MODES = ("local", "local+central", "local+secagg")
# Flower's central-DP accounting needs FedAvg's own aggregation; SecAgg+ only yields a (weighted) sum
MODE_STRATEGIES = {"local+central": ("fedavg", "fedprox"), "local+secagg": ("fedavg", "fedprox")}


@dataclass(frozen=True)
class FederationConfig:
    """Server-side settings of a federated run."""

    num_rounds: int = 5
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    min_sites: int = 2
    round_timeout: float = 900.0
    proximal_mu: float = 0.01  # FedProx only
    server_lr: float = 0.05  # FedAdam's eta
    trim_beta: float = 0.2  # FedTrimmedAvg's fraction cut at each end
    krum_byzantine: int = 0  # Krum's assumed number of malicious sites
    alert_rate: float = 0.05
    # without DP: std (counts) of the noise on each calibration histogram bin. Under DP the noise
    # is set by calibration_share instead, and accounted (calibration_budget.py)
    calibration_noise: float = 0.5
    # under DP: the share of each site's epsilon budget that one run's calibration releases
    # (and its noisy training count) may spend on their own; DP-SGD plans around it
    calibration_share: float = 0.4
    # calibrate (evaluate + threshold) every this many rounds and always after the last one;
    # 0: after the last round only (each calibration is a release that costs privacy)
    calibration_every: int = 0
    # whose statistics the calibration histograms count: "validation" (held-out shoppers),
    # "all" (training shoppers too: five times the shoppers behind the same noise, for a model
    # trained under DP, which bounds how much better it fits its training shoppers), "auto"
    # (all under DP, validation without)
    calibration_shoppers: str = "auto"
    checkpoint_dir: str = "runs/flwr/checkpoints"
    final_model_dir: str = ""  # default: CHECKPOINT_DIR/final
    resume: bool = False
    data_dir: str = ""  # simulation: site k reads DATA_DIR/site-k/
    ledger_dir: str = ""  # simulation: site k keeps LEDGER_DIR/site-k.json

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.num_rounds < 1:
            raise ConfigError(f"num-rounds must be >= 1, not {self.num_rounds}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train must be in (0, 1], not {self.fraction_train}")
        if self.min_sites < 1:
            raise ConfigError(f"min-sites must be >= 1, not {self.min_sites}")
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim-beta must be in [0, 0.5), not {self.trim_beta}")
        if not 0 < self.alert_rate < 1:
            raise ConfigError(f"alert-rate must be in (0, 1), not {self.alert_rate}")
        if not 0 < self.calibration_share < 1:
            raise ConfigError(f"calibration-share must be in (0, 1), not {self.calibration_share}")
        if self.calibration_shoppers not in CALIBRATION_SHOPPERS:
            raise ConfigError(f"calibration-shoppers must be one of "
                              f"{', '.join(CALIBRATION_SHOPPERS)}, not {self.calibration_shoppers!r}")
        if self.calibration_every < 0:
            raise ConfigError(f"calibration-every must be >= 0, not {self.calibration_every}")


@dataclass(frozen=True)
class PrivacyModeConfig:
    """Which guarantees a run adds on top of each site's local shopper-level DP.

    ``local``: DP-SGD at every site only. ``local+central``: plus site-level DP from Flower's
    central-DP wrapper (server-side fixed clipping of each site's update, Gaussian noise on the
    average, Flower's RDP accountant, equal site weights). ``local+secagg``: plus Flower's SecAgg+,
    so the server only sees the sum of the sites' (quantised, masked) updates.
    """

    mode: str = "local"
    central_noise_multiplier: float = 1.0  # std of the noise on the average / (clip / sites)
    central_clipping_norm: float = 1.0  # L2 norm each site's update is clipped to
    central_sites_per_round: int = 2  # exactly this many sites are sampled every round
    central_epsilon: float = 10.0  # site-level budget: the run stops before passing it
    central_delta: float = 0.0  # 0: min(1e-5, 1 / (10 * sites per round))
    secagg_num_shares: float = 1.0  # fraction of the round's sites each secret is shared with
    secagg_reconstruction_threshold: float = 0.66  # fraction of shares needed to unmask
    secagg_clipping_range: float = 8.0  # each (weighted) update entry is clipped to +-this
    secagg_quantization_range: int = 4194304  # 2**22 integer levels over the clipping range
    secagg_modulus_range: int = 4294967296  # 2**32: masks and sums are taken modulo this
    secagg_max_weight: float = 1000.0  # a site's weight (training shoppers) is capped at this

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise ConfigError(f"privacy-mode must be one of {', '.join(PRIVACY_MODES)}, "
                              f"not {self.mode!r}")
        if not is_positive_number(self.central_noise_multiplier):
            raise ConfigError("central-noise-multiplier must be positive (Flower's accountant "
                              f"needs noise), not {self.central_noise_multiplier}")
        if not is_positive_number(self.central_clipping_norm):
            raise ConfigError(f"central-clipping-norm must be positive, not "
                              f"{self.central_clipping_norm}")
        if self.central_sites_per_round < 1:
            raise ConfigError(f"central-sites-per-round must be >= 1, not "
                              f"{self.central_sites_per_round}")
        if not is_positive_number(self.central_epsilon):
            raise ConfigError(f"central-epsilon must be positive, not {self.central_epsilon}")
        if not 0 <= self.central_delta < 1:
            raise ConfigError(f"central-delta must be in [0, 1), not {self.central_delta}")
        if not 0 < self.secagg_num_shares <= 1:
            raise ConfigError(f"secagg-num-shares is a fraction of the round's sites in (0, 1], "
                              f"not {self.secagg_num_shares}")
        if not 0 < self.secagg_reconstruction_threshold <= 1:
            raise ConfigError("secagg-reconstruction-threshold is a fraction of the shares in "
                              f"(0, 1], not {self.secagg_reconstruction_threshold}")
        if self.secagg_clipping_range <= 0 or self.secagg_max_weight <= 0:
            raise ConfigError("secagg-clipping-range and secagg-max-weight must be positive")
        if (self.secagg_quantization_range < 2
                or self.secagg_modulus_range <= self.secagg_quantization_range
                or self.secagg_modulus_range & (self.secagg_modulus_range - 1)
                or self.secagg_modulus_range > 2**32):
            raise ConfigError("secagg-modulus-range must be a power of 2 of at most 2**32 and "
                              "larger than secagg-quantization-range")

    @property
    def central(self) -> bool:
        """Site-level central DP is on."""
        return self.mode == "local+central"

    @property
    def secagg(self) -> bool:
        """Secure aggregation (SecAgg+) is on."""
        return self.mode == "local+secagg"


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs: tokeniser, model, local training, DP, federation."""

    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig  # one round of local training (epochs = local epochs)
    federation: FederationConfig
    validation_fraction: float = 0.2
    budget: float | None = None  # per-site epsilon budget (None without DP)
    max_noise: float = MAX_NOISE  # a site declines rather than train with more noise than this
    privacy: PrivacyModeConfig = PrivacyModeConfig()
    # run config dp-seed (None: -1, from the OS): seeds DP-SGD's sampling and noise (also in
    # train.dp) and the sites' calibration-histogram noise, with or without DP
    dp_seed: int | None = None
    # a model directory (seqanom pretrain) the run starts from, at this path at the server and at
    # every site; pretrained_digest (optional): its weights' arrays_digest, checked where read
    pretrained: str = ""
    pretrained_digest: str = ""

    def __post_init__(self) -> None:
        if self.train.finetune != "all" and not self.pretrained:
            raise ConfigError(f"finetune {self.train.finetune} trains part of a pretrained "
                              f"model: set pretrained (a model directory) too")
        # a NaN or infinite budget would let every release through (no comparison fails)
        if self.budget is not None and not is_positive_number(self.budget):
            raise ConfigError(f"privacy budget (epsilon) must be a positive number, not {self.budget}")
        if not is_positive_number(self.max_noise):
            raise ConfigError(f"max-noise must be a positive number, not {self.max_noise}")

    @property
    def calibrates_on_all(self) -> bool:
        """Whether the calibration histograms count training shoppers too."""
        mode = self.federation.calibration_shoppers
        return mode == "all" or (mode == "auto" and self.train.dp is not None)


#: A site's local training in a federation. Run config ``local-optimizer = "auto"`` (the
#: default) trains with plain SGD under DP and with AdamW without DP; ``lr = 0`` (the default)
#: takes that optimiser's rate from ``LOCAL_LR``.
#:
#: Under DP, plain SGD at lr 1.0 (clipped per-shopper gradients have norm <= max-grad-norm = 1):
#: AdamW's per-weight scale is set by the DP noise, not by the gradient, and it did worse at the
#: sites. Measured with `seqanom simulate` (5 rounds x 4 local epochs, eps 8 per site), before
#: the fix of 2026-11-29 that gave every site its own DP noise: federated DP AUROC 0.841 -> 0.876
#: on the built-in data and 0.760 -> 0.784 on the Taobao sample in 4 IID sites (lr 0.5: 0.874 /
#: 0.782, lr 1.5: 0.862 / 0.794, lr 3: diverges). After it (Taobao 4 IID, batch 16, 3 partition
#: seeds x 2 DP seeds, in-process rounds): SGD lr 0.5 0.861; AdamW lr 0.01 0.830 over 3 of
#: those runs (SGD 0.855 there), 0.840 over all 6 with its moments kept across rounds.
#: `seqanom simulate` runs DP sites at lr 0.5, batch 16.
#:
#: Without DP, AdamW at 0.01: SGD moves every weight at one rate and was the federation's
#: bottleneck. Taobao 4 IID, seed 0: federated AUROC 0.861 (SGD lr 0.5) / 0.864 (lr 2.0) ->
#: 0.902 (AdamW), against 0.901 for centralised AdamW on the pooled shoppers. Its moments start
#: afresh every round, so a site keeps no state between rounds and a resumed run ends exactly as
#: an uninterrupted one; keeping them in ``context.state`` gained only 0.001-0.002 (3 partition
#: seeds, in-process rounds).
LOCAL_LR: dict[str, float] = {"sgd": 1.0, "adamw": 1e-2}
FEDERATED_TRAIN = TrainConfig(epochs=1, optimizer="sgd", lr=1.0)

# kebab-case key -> (section, field)
_KEYS: dict[str, tuple[str, str]] = {
    "num-rounds": ("federation", "num_rounds"),
    "strategy": ("federation", "strategy"),
    "fraction-train": ("federation", "fraction_train"),
    "min-sites": ("federation", "min_sites"),
    "round-timeout": ("federation", "round_timeout"),
    "proximal-mu": ("federation", "proximal_mu"),
    "server-lr": ("federation", "server_lr"),
    "trim-beta": ("federation", "trim_beta"),
    "krum-byzantine": ("federation", "krum_byzantine"),
    "alert-rate": ("federation", "alert_rate"),
    "calibration-noise": ("federation", "calibration_noise"),
    "calibration-share": ("federation", "calibration_share"),
    "calibration-every": ("federation", "calibration_every"),
    "calibration-shoppers": ("federation", "calibration_shoppers"),
    "checkpoint-dir": ("federation", "checkpoint_dir"),
    "final-model-dir": ("federation", "final_model_dir"),
    "resume": ("federation", "resume"),
    "data-dir": ("federation", "data_dir"),
    "ledger-dir": ("federation", "ledger_dir"),
    "model": ("model", "kind"),
    "d-model": ("model", "d_model"),
    "n-layers": ("model", "n_layers"),
    "n-heads": ("model", "n_heads"),
    "dropout": ("model", "dropout"),
    "max-len": ("model", "max_len"),
    "history-copy": ("model", "history_copy"),
    "category-buckets": ("tokenizer", "category_buckets"),
    "gap-buckets": ("tokenizer", "gap_buckets"),
    "session-gap-s": ("tokenizer", "session_gap_s"),
    "item-states": ("tokenizer", "item_states"),
    "local-epochs": ("train", "epochs"),
    "batch-size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "local-optimizer": ("train", "optimizer"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "finetune": ("train", "finetune"),
    "adapter-rank": ("train", "adapter_rank"),
    "pretrained": ("run", "pretrained"),
    "pretrained-digest": ("run", "pretrained_digest"),
    "validation-fraction": ("run", "validation_fraction"),
    "max-noise": ("run", "max_noise"),
    "dp": ("dp", "enabled"),
    "epsilon": ("dp", "epsilon"),
    "delta": ("dp", "delta"),
    "noise-multiplier": ("dp", "noise_multiplier"),
    "max-grad-norm": ("dp", "max_grad_norm"),
    "dp-seed": ("dp", "seed"),
    "accountant": ("dp", "accountant"),
    "privacy-mode": ("privacy", "mode"),
    "central-noise-multiplier": ("privacy", "central_noise_multiplier"),
    "central-clipping-norm": ("privacy", "central_clipping_norm"),
    "central-sites-per-round": ("privacy", "central_sites_per_round"),
    "central-epsilon": ("privacy", "central_epsilon"),
    "central-delta": ("privacy", "central_delta"),
    "secagg-num-shares": ("privacy", "secagg_num_shares"),
    "secagg-reconstruction-threshold": ("privacy", "secagg_reconstruction_threshold"),
    "secagg-clipping-range": ("privacy", "secagg_clipping_range"),
    "secagg-quantization-range": ("privacy", "secagg_quantization_range"),
    "secagg-modulus-range": ("privacy", "secagg_modulus_range"),
    "secagg-max-weight": ("privacy", "secagg_max_weight"),
}


def _cast(value: Any, like: Any, key: str) -> Any:
    """Cast a run-config value to the type of the field's default."""
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if isinstance(like, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(like, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(f"run config {key}: cannot use {value!r} ({err})") from err


def default_run_config() -> dict[str, Any]:
    """Every run config key with its default value (what ``flwr run`` lets a user override)."""
    defaults = {"federation": FederationConfig(), "model": ModelConfig(),
                "tokenizer": TokenizerConfig(), "train": FEDERATED_TRAIN,
                "privacy": PrivacyModeConfig()}
    flat: dict[str, dict[str, Any]] = {
        "dp": {"enabled": False, "epsilon": 8.0, "delta": 0.0, "noise_multiplier": 0.0,
               "max_grad_norm": 1.0, "seed": -1, "accountant": "rdp"},
        "run": {"validation_fraction": 0.2, "max_noise": MAX_NOISE, "pretrained": "",
                "pretrained_digest": ""}}
    out = {key: getattr(defaults[section], name) if section in defaults else flat[section][name]
           for key, (section, name) in _KEYS.items()}
    # chosen by whether the run has DP (settings_from_run_config)
    return out | {"local-optimizer": "auto", "lr": 0.0}


def _local_optimizer(train: dict[str, Any], dp: bool) -> dict[str, Any]:
    """Resolve ``local-optimizer = "auto"`` (SGD under DP, AdamW without) and ``lr = 0`` (that
    optimiser's ``LOCAL_LR``) in the train section of a run config."""
    optimizer = train.get("optimizer", "auto")
    if optimizer == "auto":
        optimizer = "sgd" if dp else "adamw"
    lr = train.get("lr", 0.0)
    if not (math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"lr must be a positive number (or 0: the optimiser's default), not {lr}")
    if optimizer not in LOCAL_LR:
        raise ConfigError(f"local-optimizer must be auto, {' or '.join(LOCAL_LR)}, "
                          f"not {optimizer!r}")
    return train | {"optimizer": optimizer, "lr": lr or LOCAL_LR[optimizer]}


def settings_from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Typed settings from a flat kebab-case run config; unknown keys raise ConfigError."""
    unknown = sorted(set(run_config) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown run config keys {unknown}; known: {', '.join(sorted(_KEYS))}")
    sections: dict[str, dict[str, Any]] = {
        s: {} for s in ("federation", "model", "tokenizer", "train", "run", "dp", "privacy")}
    like = default_run_config()
    for key, value in run_config.items():
        section, name = _KEYS[key]
        sections[section][name] = _cast(value, like[key], key)
    dp_in = {**{name: like[k] for k, (sec, name) in _KEYS.items() if sec == "dp"}, **sections["dp"]}
    dp = None
    if dp_in["enabled"]:
        noise = dp_in["noise_multiplier"] or None
        dp = DPConfig(epsilon=None if noise else dp_in["epsilon"], noise_multiplier=noise,
                      delta=dp_in["delta"] or None, max_grad_norm=dp_in["max_grad_norm"],
                      seed=None if dp_in["seed"] < 0 else dp_in["seed"],
                      accountant=dp_in["accountant"])
    run = {**{name: like[k] for k, (sec, name) in _KEYS.items() if sec == "run"}, **sections["run"]}
    if not 0 < run["validation_fraction"] < 1:
        raise ConfigError(f"validation-fraction must be in (0, 1), not {run['validation_fraction']}")
    try:
        model = dataclasses.replace(ModelConfig(), **sections["model"])
        tok = dataclasses.replace(TokenizerConfig(), **sections["tokenizer"])
        train = dataclasses.replace(FEDERATED_TRAIN, **_local_optimizer(sections["train"],
                                                                        dp is not None), dp=dp)
        fed = dataclasses.replace(FederationConfig(), **sections["federation"])
        privacy = dataclasses.replace(PrivacyModeConfig(), **sections["privacy"])
    except TypeError as err:
        raise ConfigError(f"invalid run config: {err}") from err
    if privacy.mode != "local":
        if dp is None:
            raise ConfigError(f"privacy-mode {privacy.mode!r} adds to local DP: set dp = true")
        allowed = MODE_STRATEGIES[privacy.mode]
        if fed.strategy not in allowed:
            raise ConfigError(f"privacy-mode {privacy.mode!r} works with strategy "
                              f"{' or '.join(allowed)}, not {fed.strategy!r}")
    if privacy.secagg and fed.min_sites < 2:
        raise ConfigError("privacy-mode 'local+secagg' needs min-sites >= 2 (SecAgg+ sums the "
                          "updates of at least two sites)")
    if privacy.central and privacy.central_sites_per_round > fed.min_sites:
        fed = dataclasses.replace(fed, min_sites=privacy.central_sites_per_round)
    return RunConfig(tokenizer=tok, model=model, train=train, federation=fed,
                       validation_fraction=run["validation_fraction"],
                       budget=dp_in["epsilon"] if dp else None, max_noise=run["max_noise"],
                       privacy=privacy, dp_seed=None if dp_in["seed"] < 0 else dp_in["seed"],
                       pretrained=run["pretrained"], pretrained_digest=run["pretrained_digest"])
