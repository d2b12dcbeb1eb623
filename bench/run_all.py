"""Run every benchmark and print one JSON object.

    python -m bench.run_all [--quick] [--out JSON]

Full: ingest of 10M events, 5 timed training steps per run. ``--quick``: 1M events, 2 timed steps.
Writes nothing into the repository unless ``--out`` points there.
"""

from __future__ import annotations

import argparse
import time

from bench import emit, ingest_bench, machine_info, setup_logging, train_step_bench


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1M events and 2 timed steps")
    ap.add_argument("--events", type=int, default=None, help="override the ingest event count")
    ap.add_argument("--steps", type=int, default=None, help="override the timed training steps")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
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
    r = ingest["ratios"]
    summary = {
        "ingest_seqanom_events_per_s": ingest["readers"]["seqanom"]["events_per_s"],
        "ingest_seqanom_vs_pyarrow": r["seqanom_vs_pyarrow"],
        "ingest_taobao_events_per_s": ingest["readers"]["taobao"]["events_per_s"],
        "ingest_taobao_vs_pyarrow": r["taobao_vs_pyarrow_same_file"],
        **{f"dp_over_plain_{k}": v["ratio"] for k, v in train["kinds"].items()},
    }
    emit(
        {
            "bench": "all",
            "machine": machine_info(),
            "params": {
                "quick": args.quick,
                "ingest": {"events": events, "repeats": repeats, "warmup": 1},
                "train_step": {
                    "batch": args.batch,
                    "length": args.length,
                    "steps": steps,
                    "warmup": train_step_bench.WARMUP,
                    "threads": args.threads,
                },
            },
            "summary": summary,
            "results": {"ingest": ingest, "train_step": train},
            "wall_s": {
                "ingest": round(t1 - t0, 1),
                "train_step": round(t2 - t1, 1),
                "total": round(t2 - t0, 1),
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
