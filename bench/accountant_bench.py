"""Noise saved by Opacus' PRV accountant against RDP at the simulate defaults, and what it costs.

    python -m bench.accountant_bench [--epsilon 8] [--repeats 3] [--out JSON]

The schedule is derived, not assumed: the built-in data of ``seqanom simulate``'s defaults
(``simulation.run.SimulationConfig()``: shoppers, sites, natural partition, test fraction, seed)
is generated and split as ``prepare_sites`` and ``site_round.load_site`` do (test shoppers,
then the validation fraction of the run config), and each site's DP-SGD schedule is
``poisson_schedule(training shoppers, batch size, local epochs)``: sample rate ``q`` and steps
per round, times the rounds. For each distinct schedule it reports the noise multiplier each
accountant needs for the whole run to stay within epsilon (``privacy.noise_for_budget``, what a
site plans in round 1), the noise PRV saves, and the epsilon each accountant gives at the RDP
noise. Timings: seconds per epsilon query with the memo caches cleared (``cold``: what a site
pays once for a new history) for one DP-SGD entry and for the five entries of a site after
five rounds, and seconds per noise search (cold).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

from bench import emit, envelope, setup_logging

log = logging.getLogger("bench.accountant")


def site_schedules(cfg: Any) -> list[dict[str, Any]]:
    """Each simulated site's training shoppers, sample rate, steps per round and in all."""
    from seqanom_core.config import TokenizerConfig
    from seqanom_core.federation.run_config import settings_from_run_config
    from seqanom_core.privacy import default_delta
    from seqanom_core.sequences import build_sequences, split_events_by_shopper, split_shoppers
    from seqanom_core.training import poisson_schedule
    from simulation.partition import partition_events
    from simulation.run import load_events, run_config

    settings = settings_from_run_config(run_config(cfg))
    tok: TokenizerConfig = settings.tokenizer
    events, _ = load_events(cfg)
    parts = partition_events(events, cfg.sites, cfg.partition, alpha=cfg.alpha, seed=cfg.seed)
    out = []
    for k, part in enumerate(parts):
        train_events, _ = split_events_by_shopper(part, cfg.test_fraction, cfg.seed + k)
        seqs = build_sequences(train_events, tok)
        train, _ = split_shoppers(seqs, settings.validation_fraction, settings.train.seed)
        q, steps = poisson_schedule(len(train), settings.train.batch_size, settings.train.epochs)
        out.append({"site": f"site-{k}", "train_shoppers": len(train), "sample_rate": q,
                    "steps_per_round": steps, "steps": steps * settings.federation.num_rounds,
                    "delta": settings.train.dp.delta if settings.train.dp and
                    settings.train.dp.delta else default_delta(len(train))})
    return out


def _clear_caches() -> None:
    from seqanom_core import privacy

    privacy._prv_epsilon.cache_clear()
    privacy._rdp_per_step.cache_clear()


def _timed(fn: Any, repeats: int) -> tuple[Any, float]:
    """(result, median seconds) of ``fn()`` with the memo caches cleared before each call."""
    times, result = [], None
    for _ in range(repeats):
        _clear_caches()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def compare(q: float, steps: int, steps_per_round: int, epsilon: float, delta: float,
            repeats: int) -> dict[str, Any]:
    """Noise for ``epsilon`` under RDP and PRV, epsilon at the RDP noise, and query costs."""
    from seqanom_core.privacy import AccountantState, noise_for_budget

    res: dict[str, Any] = {"sample_rate": q, "steps": steps, "delta": delta}
    noise: dict[str, float] = {}
    for acc in ("rdp", "prv"):
        empty = AccountantState(accountant=acc)
        noise[acc], res[f"{acc}_search_s"] = _timed(
            lambda e=empty: noise_for_budget(e, epsilon, delta, q, steps), repeats)
    res["noise_rdp"], res["noise_prv"] = noise["rdp"], noise["prv"]
    res["noise_saved"] = 1 - noise["prv"] / noise["rdp"]
    for acc in ("rdp", "prv"):
        one = AccountantState(history=[(noise["rdp"], q, steps)], delta=delta, accountant=acc)
        res[f"epsilon_{acc}_at_rdp_noise"], res[f"{acc}_query_s"] = _timed(one.epsilon, repeats)
        # a site after five rounds: five distinct entries (noise re-planned every round)
        five = AccountantState(history=[(noise["rdp"] * (1 + 0.01 * r), q, steps_per_round)
                                        for r in range(5)], delta=delta, accountant=acc)
        _, res[f"{acc}_query_5_entries_s"] = _timed(five.epsilon, repeats)
    return res


def run(epsilon: float, repeats: int) -> dict[str, Any]:
    """The bench's results (see the module docstring)."""
    from simulation.run import SimulationConfig

    cfg = SimulationConfig()
    sites = site_schedules(cfg)
    log.info("sites: %s", [(s["train_shoppers"], s["steps"]) for s in sites])
    results = []
    seen: set[tuple[float, int]] = set()
    for s in sites:
        key = (s["sample_rate"], s["steps"])
        if key in seen:
            continue
        seen.add(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus' RDP order warnings at high noise
            results.append({"sites": [t["site"] for t in sites
                                      if (t["sample_rate"], t["steps"]) == key],
                            **compare(s["sample_rate"], s["steps"], s["steps_per_round"],
                                      epsilon, s["delta"], repeats)})
    return {"sites": sites, "schedules": results}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.accountant_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--epsilon", type=float, default=8.0, help="per-site budget (simulate's: 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    ap.add_argument("--out", default=None, help="also write the JSON here (default: stdout only)")
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    results = run(args.epsilon, args.repeats)
    params = {"epsilon": args.epsilon, "repeats": args.repeats,
              "simulate_defaults": "simulation.run.SimulationConfig()"}
    emit(envelope("accountant", params, results, round(time.perf_counter() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
