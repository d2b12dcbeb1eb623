"""The one training loop (plain or Opacus DP-SGD), its learning-rate schedule and DP randomness.

Windows and the per-position loss are in ``seqanom_core.windows``; scoring a trained model is in
``seqanom_core.inference``.
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from seqanom_core.config import TrainConfig
from seqanom_core.errors import ConfigError
from seqanom_core.ingest.shards import ShardedSequences, ShardWindows
from seqanom_core.models import NextEventModel
from seqanom_core.privacy import (
    AccountantState,
    default_delta,
    fixed_noise_within_budget,
    noise_within_budget,
)
from seqanom_core.sequences import PAD, SequenceSet
from seqanom_core.windows import ShopperWindows, channel_nll, split_batch

log = logging.getLogger(__name__)


def sequence_loss(
    model: NextEventModel, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over the batch of each sequence's mean per-position loss (all channels summed)."""
    nll, _ = channel_nll(model, inputs, targets)
    per_pos = torch.stack(list(nll.values())).sum(0)
    n_valid = (targets["event"] != PAD).sum(1).clamp(min=1)
    return (per_pos.sum(1) / n_valid).mean()


class _Batches(torch.utils.data.Sampler):
    """A batch sampler that only states how many batches an epoch has (under DP, Opacus replaces
    it by Poisson sampling at 1 / that number and never iterates it)."""

    def __init__(self, n_batches: int) -> None:
        self.n_batches = n_batches

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):  # noqa: ANN204
        raise RuntimeError("only Opacus' Poisson sampler iterates a DP loader")


def poisson_schedule(n_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, steps) of a training call: what Opacus' Poisson loader does and what is accounted.

    The loader has ``ceil(n / min(batch, n))`` batches; Opacus samples each example with
    ``q = 1 / len(loader)`` and takes ``len(loader)`` steps per epoch.
    """
    batch = min(batch_size, n_examples)
    n_batches = -(-n_examples // batch)
    return 1.0 / n_batches, epochs * n_batches


SGD_CLIP_NORM = 1.0  # batch gradient norm cap of plain SGD without DP (DP clips per shopper)


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` steps ("constant" or "cosine").

    "cosine": linear warm-up over the first 5% of steps, then cosine decay to 10% of the peak.
    """
    if schedule == "constant" or total <= 1:
        return 1.0
    warm = max(1, int(0.05 * total))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What a training call did: losses per epoch, and the privacy spent when DP was on."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    dp: bool = False
    noise_multiplier: float | None = None
    epsilon: float | None = None  # cumulative, including earlier calls restored from state
    delta: float | None = None
    accountant_state: AccountantState | None = None


def dp_generators(seed: int | None, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(Poisson sampling, noise) generators of one DP training call.

    Without a seed both are seeded from the OS (``secrets``), never from the training seed: that
    seed is shared (in a federation, every site's run config has it), and noise that a server can
    regenerate protects nobody; sites with the same seed would also all add the *same* noise, so
    averaging their updates would not reduce it. PyTorch's generators are not cryptographic ones
    (Opacus' secure_mode needs torchcsprng, which is not used).
    """
    if seed is None:
        draws = (secrets.randbits(63), secrets.randbits(63))
    else:
        a, b = np.random.SeedSequence([seed, 0x5EED]).generate_state(2, dtype=np.uint64)
        draws = (int(a) >> 1, int(b) >> 1)
    return (torch.Generator().manual_seed(draws[0]),
            torch.Generator(device=device).manual_seed(draws[1]))


def train_model(
    model: NextEventModel,
    seqs: SequenceSet | ShardedSequences,
    cfg: TrainConfig,
    device: torch.device,
    *,
    accountant_state: AccountantState | None = None,
    progress: bool = True,
    proximal_mu: float = 0.0,
    schedule_span: tuple[int, int] | None = None,
    public_size: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``seqs`` for ``cfg.epochs`` (DP-SGD when ``cfg.dp`` is set).

    ``proximal_mu > 0`` pulls the weights towards their values at the start of the call after
    every step (FedProx's proximal term as a decoupled step: it touches no data, so it is
    post-processing under DP).

    ``public_size`` (DP only): a released, noisy count of ``seqs`` that DP-SGD's sample rate,
    steps and expected batch size are computed from instead of the exact count, so that they,
    and the epsilon and noise derived from them, carry nothing more about the shoppers (a
    federated site passes its accounted training count).
    """
    if len(seqs) == 0:
        raise ConfigError("no sequences to train on")
    if proximal_mu < 0:
        raise ConfigError(f"proximal mu must be >= 0, not {proximal_mu}")
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    anchor = ({n: p.detach().clone() for n, p in model.named_parameters()}
              if proximal_mu > 0 else None)
    if isinstance(seqs, SequenceSet):
        data: Dataset = ShopperWindows(seqs, model.config.max_len, cfg.seed)
    else:  # tokenised shards on disk (seqanom_core.ingest.shards): read window by window
        data = ShardWindows(seqs.shards, model.config.max_len, cfg.seed)
    batch_size = min(cfg.batch_size, len(seqs))
    dp_gens = dp_generators(cfg.dp.seed, device) if cfg.dp is not None else None
    # under DP, Opacus draws the Poisson batches from the loader's generator: the secret one
    gen = dp_gens[0] if dp_gens else torch.Generator().manual_seed(cfg.seed)
    size = len(seqs) if public_size is None or cfg.dp is None else max(int(public_size), 1)
    if size == len(seqs):
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    else:  # Opacus takes its sample rate from the loader's length: the public size's batches
        batches = poisson_schedule(size, cfg.batch_size, 1)[1]
        loader = DataLoader(data, batch_sampler=_Batches(batches), generator=gen)
    optimizer_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.AdamW
    optimizer = optimizer_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    clip_plain = cfg.optimizer == "sgd" and cfg.dp is None
    result = TrainResult(dp=cfg.dp is not None)
    train_module: torch.nn.Module = model
    engine = None
    if cfg.dp is not None:
        from opacus import PrivacyEngine

        prior = accountant_state or AccountantState(accountant=cfg.dp.accountant)
        prior.require(cfg.dp.accountant, "the restored accountant state")
        delta = cfg.dp.delta or prior.delta or default_delta(len(seqs))
        if prior.delta is not None and prior.history and not math.isclose(prior.delta, delta):
            raise ConfigError(f"delta {delta} differs from the restored ledger's delta {prior.delta}")
        sample_rate, steps = poisson_schedule(size, cfg.batch_size, cfg.epochs)
        if steps != cfg.epochs * len(loader):
            raise RuntimeError(f"planned {steps} steps, the loader takes {cfg.epochs * len(loader)}")
        sigma = cfg.dp.noise_multiplier
        if sigma is None:
            assert cfg.dp.epsilon is not None
            sigma = noise_within_budget(prior, cfg.dp.epsilon, delta, sample_rate, steps,
                                        cfg.dp.max_noise)
        else:
            fixed_noise_within_budget(prior, sigma, cfg.dp.epsilon, delta, sample_rate, steps,
                                      cfg.dp.max_noise)
        with warnings.catch_warnings():
            # Opacus warns that secure_mode is off on every engine: the noise comes from
            # PyTorch's default generator (stated in the README's privacy section)
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=prior.accountant, secure_mode=False)
            engine.accountant.history = list(prior.history)
            train_module, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
                max_grad_norm=cfg.dp.max_grad_norm, poisson_sampling=True,
                noise_generator=dp_gens[1] if dp_gens else None,
            )
        if not math.isclose(loader.sample_rate, sample_rate):  # type: ignore[attr-defined]
            raise RuntimeError(f"Opacus sample rate {loader.sample_rate} != planned {sample_rate}")
        # Opacus divides the noisy sum by len(dataset) x rate: from the public size instead
        optimizer.expected_batch_size = max(1, int(size * sample_rate))  # type: ignore[attr-defined]
        result.noise_multiplier, result.delta = sigma, delta
        log.info("DP-SGD: noise %.3f, clip %.2f, sample rate %.4f, %d steps, delta %.2e",
                 sigma, cfg.dp.max_grad_norm, sample_rate, steps, delta)

    total = cfg.epochs * len(loader)
    # the schedule may span more than this call: (steps before it, steps of the whole span)
    span_start, span_total = schedule_span or (0, total)
    bar = tqdm(total=total, desc=f"train {model.config.kind}", disable=not progress or None,
               leave=False)
    step = -1
    try:
        for epoch in range(cfg.epochs):
            data.epoch = epoch
            losses = []
            for batch in loader:
                bar.update(1)
                step += 1
                if batch.shape[0] == 0:  # Poisson sampling can draw an empty batch: nothing released
                    continue
                inputs, targets = split_batch(batch.to(device))
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(span_start + step, span_total, cfg.lr_schedule)
                optimizer.zero_grad(set_to_none=True)
                loss = sequence_loss(train_module, inputs, targets)  # type: ignore[arg-type]
                with warnings.catch_warnings():
                    # Opacus' hooks sit on modules whose inputs (token ids) need no gradient,
                    # which PyTorch warns about on every backward pass
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                if clip_plain:  # plain SGD at a DP-sized lr: keep steps as bounded as under DP
                    torch.nn.utils.clip_grad_norm_(model.parameters(), SGD_CLIP_NORM)
                optimizer.step()
                if anchor is not None:
                    _proximal_step(model, anchor, cfg.lr * proximal_mu)
                result.steps += 1
                losses.append(float(loss.detach()))
            result.epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
            bar.set_postfix(loss=f"{result.epoch_losses[-1]:.3f}")
            log.info("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, result.epoch_losses[-1])
    finally:
        bar.close()
        if engine is not None and hasattr(train_module, "_close"):
            train_module._close()  # type: ignore[operator]  # remove Opacus hooks
    if engine is not None:
        state = AccountantState(history=[tuple(h) for h in engine.accountant.history],
                                delta=result.delta, accountant=engine.accountant.mechanism())
        result.accountant_state = state
        result.epsilon = state.epsilon()
        target = cfg.dp.epsilon if cfg.dp is not None else None
        if target is not None and result.epsilon > target * (1 + 1e-9):
            raise RuntimeError(f"epsilon {result.epsilon} exceeded target {target}")
        log.info("privacy spent: epsilon %.3f at delta %.2e (cumulative)", result.epsilon, result.delta)
    model.eval()
    return result


@torch.no_grad()
def _proximal_step(model: NextEventModel, anchor: dict[str, torch.Tensor], rate: float) -> None:
    """Move every parameter a fraction ``rate`` of the way back to ``anchor``."""
    for name, p in model.named_parameters():
        p.sub_(min(rate, 1.0) * (p - anchor[name]))
