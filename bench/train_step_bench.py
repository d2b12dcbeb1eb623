"""Training-step cost of Opacus DP-SGD against plain training, for the project's own models.

    python -m bench.train_step_bench [--batch 256] [--length 50] [--steps 5] [--kinds K,K]
                                     [--out JSON]

For each model kind in ``--kinds`` (default: every registered one,
``seqanom_core.models.backbone_kinds()``: "transformer", "lstm", "mingru") builds
``seqanom_core.models.build_model`` with the default ``ModelConfig`` and the event vocabulary,
and times one training step -- zero_grad,
``seqanom_core.training.sequence_loss``, backward, AdamW step, as in ``train_model`` -- on one
random token batch: plain, and wrapped by ``opacus.PrivacyEngine.make_private`` (per-sample
gradients, clipping, noise). Plain and DP steps alternate (same background load for both).
Reported per kind: the median of ``--steps`` timed steps after 2 warm-ups, and ``ratio`` =
dp_s / plain_s. Note the LSTM is Opacus' ``DPLSTM`` in both runs (the project always uses it),
so its ratio is the DP-SGD cost on top of the project's plain path.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time
import warnings

from bench import emit, envelope, peak_rss_mb, setup_logging

log = logging.getLogger("bench.train_step")


def registered_kinds() -> tuple[str, ...]:
    """Every registered model kind (imports the backbones, hence torch: only when called)."""
    from seqanom_core.models import backbone_kinds

    return backbone_kinds()

WARMUP = 2


def make_batch(vocab: dict[str, int], batch: int, length: int, seed: int = 0):
    """Random ``(inputs, targets)`` dicts of ``(batch, length)`` int64 tokens within the vocab.

    Targets are drawn from 1.. (0 is the padding token the loss ignores), so every position counts.
    """
    import torch

    from seqanom_core.sequences import CHANNELS

    g = torch.Generator().manual_seed(seed)
    inputs = {c: torch.randint(0, vocab[c], (batch, length), generator=g) for c in CHANNELS}
    targets = {c: torch.randint(1, vocab[c], (batch, length), generator=g) for c in CHANNELS}
    return inputs, targets


def _time_interleaved(steps_by_name: dict, steps: int) -> dict[str, list[float]]:
    """Warm each step function up WARMUP times, then time them alternately ``steps`` rounds.

    Alternating plain and DP steps exposes both to the same background load (the CPU is shared),
    which keeps their ratio meaningful when absolute times drift.
    """
    for step in steps_by_name.values():
        for _ in range(WARMUP):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    return times


def bench_kind(kind: str, batch: int, length: int, steps: int, seed: int = 0) -> dict:
    """Time plain and DP-SGD training steps of one model kind."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
    from seqanom_core.models import build_model
    from seqanom_core.sequences import CHANNELS, vocab_sizes
    from seqanom_core.training import sequence_loss

    vocab = vocab_sizes(TokenizerConfig(), "events")
    cfg = ModelConfig(kind=kind)
    if length > cfg.max_len:
        raise SystemExit(f"--length {length} exceeds the model window max_len={cfg.max_len}")
    tcfg = TrainConfig()
    inputs, targets = make_batch(vocab, batch, length, seed)

    def fresh():
        """The same initial model and optimiser for both runs."""
        torch.manual_seed(seed)
        model = build_model(cfg, vocab).train()
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        return model, opt

    def stepper(module, opt):
        """One training step, as in seqanom_core.training.train_model."""
        losses = []

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = sequence_loss(module, inputs, targets)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))

        return step, losses

    model, opt = fresh()
    n_params = sum(p.numel() for p in model.parameters())
    plain_step, plain_losses = stepper(model, opt)

    from opacus import PrivacyEngine

    dp_model, opt = fresh()
    stacked = torch.stack([inputs[c] for c in CHANNELS] + [targets[c] for c in CHANNELS], dim=1)
    loader = DataLoader(TensorDataset(stacked), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "secure RNG turned off"
        dp_module, dp_opt, _ = PrivacyEngine().make_private(
            module=dp_model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
        )
    dp_step, dp_losses = stepper(dp_module, dp_opt)
    log.info("%s: %d parameters; timing plain and DP-SGD steps", kind, n_params)
    try:
        times = _time_interleaved({"plain": plain_step, "dp": dp_step}, steps)
    finally:
        dp_module._close()
    plain_times, dp_times = times["plain"], times["dp"]
    plain_s, dp_s = statistics.median(plain_times), statistics.median(dp_times)
    log.info("%s: plain %.3f s, dp %.3f s, ratio %.2f", kind, plain_s, dp_s, dp_s / plain_s)
    return {
        "parameters": n_params,
        "plain_s": round(plain_s, 4),
        "dp_s": round(dp_s, 4),
        "ratio": round(dp_s / plain_s, 3),
        "plain_times_s": [round(t, 4) for t in plain_times],
        "dp_times_s": [round(t, 4) for t in dp_times],
        "plain_tokens_per_s": round(batch * length / plain_s),
        "dp_tokens_per_s": round(batch * length / dp_s),
        "loss_finite": all(math.isfinite(v) for v in plain_losses + dp_losses),
    }


# Opacus' hooks on a model whose inputs need no gradient (token ids): harmless, said every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def run(
    batch: int = 256,
    length: int = 50,
    steps: int = 5,
    threads: int = 2,
    kinds: tuple[str, ...] | None = None,
) -> dict:
    """Time the given model kinds (default: every registered one); return the results (no
    machine info)."""
    import torch

    kinds = registered_kinds() if kinds is None else kinds
    torch.set_num_threads(threads)
    load_start = round(os.getloadavg()[0], 2)
    results = {kind: bench_kind(kind, batch, length, steps) for kind in kinds}
    return {"kinds": results, "peak_rss_mb": peak_rss_mb(), "load_avg_1m_start": load_start}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.train_step_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--batch", type=int, default=256, help="sequences per batch (default 256)")
    ap.add_argument("--length", type=int, default=50, help="positions per sequence (default 50)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run (median is kept)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--kinds", default=None,
                    help="comma-separated model kinds (default: every registered kind)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    kinds = (registered_kinds() if args.kinds is None
             else tuple(k.strip() for k in args.kinds.split(",") if k.strip()))
    results = run(args.batch, args.length, args.steps, args.threads, kinds)
    params = {
        "batch": args.batch,
        "length": args.length,
        "steps": args.steps,
        "warmup": WARMUP,
        "threads": args.threads,
        "kinds": list(kinds),
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "timing": "median of timed steps, plain and DP alternating; step = zero_grad + loss + backward + AdamW step",
    }
    emit(envelope("train_step", params, results, round(time.perf_counter() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
