"""Run every benchmark and print one JSON object.

    python -m bench.run_all [--quick] [--out JSON]

Full: ingest of 10M events, 5 timed training steps per run, federated vs centralised training at
10 and 50 sites. ``--quick``: 1M events, 2 timed steps, the federation bench's quick form (3 sites).
``--skip-federation`` leaves the federation bench out. Writes nothing into the repository unless
``--out`` points there.
"""

from __future__ import annotations

import argparse
import time

from bench import emit, envelope, federation_bench, ingest_bench, setup_logging, train_step_bench


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M events and 2 timed steps")
    ap.add_argument("--events", type=int, default=None, help="override the ingest event count")
    ap.add_argument("--steps", type=int, default=None, help="override the timed training steps")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--skip-federation", action="store_true", help="leave the federation bench out")
    ap.add_argument("--out", default=None, help="also write the JSON here (default: stdout only)")
    args = ap.parse_args(argv)
    setup_logging()
    events = args.events or (1_000_000 if args.quick else 10_000_000)
    steps = args.steps or (2 if args.quick else 5)
    repeats = 3
    t0 = time.perf_counter()
    ingest = ingest_bench.run(events, repeats)
    t1 = time.perf_counter()
    train = train_step_bench.run(args.batch, args.length, steps, args.threads)
    t2 = time.perf_counter()
    fed_params = federation_bench.QUICK if args.quick else federation_bench.DEFAULTS
    federation = None
    if not args.skip_federation:
        federation = federation_bench.run(fed_params["sites"], fed_params["shoppers"],
                                          fed_params["rounds"], fed_params["local_epochs"],
                                          bracket=not args.quick)
    t3 = time.perf_counter()
    r = ingest["ratios"]
    summary = {
        "ingest_seqanom_events_per_s": ingest["readers"]["seqanom"]["events_per_s"],
        "ingest_seqanom_vs_pyarrow": r["seqanom_vs_pyarrow"],
        "ingest_taobao_events_per_s": ingest["readers"]["taobao"]["events_per_s"],
        "ingest_taobao_vs_pyarrow": r["taobao_vs_pyarrow_same_file"],
        **{f"dp_over_plain_{k}": v["ratio"] for k, v in train["kinds"].items()},
    }
    if federation is not None:
        for n, row in federation_bench.summary(federation).items():
            summary[f"federated_over_centralised_{n}_sites"] = row["ratio"]
            summary[f"federated_peak_rss_sum_mb_{n}_sites"] = row["federated_peak_rss_sum_mb"]
    params = {
        "quick": args.quick,
        "ingest": {"events": events, "repeats": repeats, "warmup": 1},
        "train_step": {
            "batch": args.batch,
            "length": args.length,
            "steps": steps,
            "warmup": train_step_bench.WARMUP,
            "threads": args.threads,
        },
        "federation": None if args.skip_federation else {
            **fed_params, "dp": True, "central_threads": 1, "centralised_runs": 1 if args.quick else 2},
    }
    results = {"ingest": ingest, "train_step": train, "federation": federation}
    wall = {
        "ingest": round(t1 - t0, 1),
        "train_step": round(t2 - t1, 1),
        "federation": round(t3 - t2, 1),
        "total": round(t3 - t0, 1),
    }
    emit(envelope("all", params, results, wall, summary=summary), args.out)


if __name__ == "__main__":
    main()
