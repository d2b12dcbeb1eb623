"""Taobao-scale streaming ingest: events/s and peak RSS of ``seqanom tokenize``'s two passes.

    python -m bench.scale_ingest_bench --events 10000000 [--tmp-dir DIR] [--out JSON]

Writes a synthetic Taobao ``UserBehavior.csv`` of N events (no header: user, item, category,
behaviour pv/cart/fav/buy, Unix seconds; shoppers drawn at random per row, so the file is NOT
grouped by shopper: the partitioning pass sees the worst order), then runs
``seqanom_core.ingest.streaming`` in a fresh subprocess: pass 1 (read in record batches, check,
hash-partition by shopper into Arrow IPC files) and pass 2 (per partition: sequences and
tokens to ``.npy`` shards). Reported per stage: seconds, events/s and the process's peak RSS
(VmHWM) at the end of the stage, and the RSS of the process and its pass-2 workers together,
sampled every 50 ms; the target is 10^8 events at <= 12 GB peak RSS and
>= 1 M events/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import emit, envelope, peak_rss_mb, setup_logging

log = logging.getLogger("bench.scale_ingest")
REPO_ROOT = Path(__file__).resolve().parents[1]
BEHAVIOR_P = (0.895, 0.055, 0.03, 0.02)  # pv, cart, fav, buy (about the real file's mix)
T0 = 1511539200  # 2017-11-25 00:00 UTC, the real file's first day
CHUNK = 2_000_000


def write_taobao(path: Path, n_events: int, seed: int = 0, events_per_shopper: int = 100) -> dict:
    """Write ``n_events`` synthetic Taobao rows to ``path`` in chunks (bounded memory)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    shoppers = max(1, n_events // events_per_shopper)
    names = pa.array(["pv", "cart", "fav", "buy"])
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    t0 = time.perf_counter()
    written = 0
    with pa.OSFile(str(path), "wb") as f:
        writer = None
        while written < n_events:
            n = min(CHUNK, n_events - written)
            item = rng.integers(1, 5_000_000, n)
            table = pa.table({
                "user": rng.integers(1, shoppers + 1, n),
                "item": item,
                "category": (item * 2654435761 % 9439) + 1,
                "behavior": names.take(pa.array(rng.choice(4, n, p=BEHAVIOR_P))),
                "timestamp": T0 + rng.integers(0, 9 * 86400, n),
            })
            if writer is None:
                writer = pacsv.CSVWriter(f, table.schema, write_options=opts)
            writer.write_table(table)
            written += n
        if writer is not None:
            writer.close()
    return {"events": written, "shoppers_max": shoppers, "csv_mb": round(path.stat().st_size / 1e6, 1),
            "generate_s": round(time.perf_counter() - t0, 1)}


class TreeRss:
    """Samples the RSS of this process plus all its children (the pass-2 workers) every
    ``every`` seconds in a thread; ``peak_mb`` is the largest sum seen (a sampled lower bound
    of the true peak, which VmHWM gives exactly for this process alone)."""

    def __init__(self, every: float = 0.05) -> None:
        import threading

        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.stop.wait(self.every)

    def __enter__(self) -> TreeRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children (the workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def worker(path: str, work: str, shards: int | None, batch_bytes: int, workers: int) -> dict:
    """Both passes in this process; per stage seconds, events/s and peak RSS."""
    from seqanom_core.config import TokenizerConfig
    from seqanom_core.ingest.streaming import partition_events, tokenize_partitions

    logging.getLogger("seqanom_core").setLevel(logging.WARNING)
    tree = TreeRss().__enter__()
    t0, c0 = time.perf_counter(), _cpu_s()
    parts, report = partition_events(path, "taobao", work, n_shards=shards,
                                     batch_bytes=batch_bytes, progress=False)
    t1, c1 = time.perf_counter(), _cpu_s()
    rss1 = peak_rss_mb()
    part_mb = sum(p.stat().st_size for p in parts) / 1e6
    shard_info = tokenize_partitions(parts, Path(work) / "tokens", TokenizerConfig(),
                                     progress=False, workers=workers)
    t2, c2 = time.perf_counter(), _cpu_s()
    tree.__exit__()
    n = report.rows_read
    return {
        "rows_read": n, "rows_kept": report.rows_kept, "rejected": report.rejected,
        "shards": len(shard_info), "sequences": sum(s["sequences"] for s in shard_info),
        "partitions_mb": round(part_mb, 1),
        "largest_shard_events": max((s["events"] for s in shard_info), default=0),
        # cpu_s: CPU seconds of the stage (all processes): on shared cores the steadier cost
        "pass1_partition": {"s": round(t1 - t0, 2), "events_per_s": round(n / (t1 - t0)),
                            "cpu_s": round(c1 - c0, 1), "peak_rss_mb": rss1},
        "pass2_tokenise": {"s": round(t2 - t1, 2), "events_per_s": round(n / (t2 - t1)),
                           "cpu_s": round(c2 - c1, 1), "workers": workers, "peak_rss_mb": peak_rss_mb()},
        "total": {"s": round(t2 - t0, 2), "events_per_s": round(n / (t2 - t0)),
                  "cpu_s": round(c2 - c0, 1),
                  "peak_rss_mb_main_process": peak_rss_mb(),
                  "peak_rss_mb_with_workers_sampled": tree.peak_mb},
    }


def run(n_events: int, tmp_dir: str | None, shards: int | None, batch_bytes: int,
        workers: int = 2, keep: bool = False) -> dict:
    """Generate the file, run the worker in a subprocess, return both."""
    d = Path(tempfile.mkdtemp(prefix="seqanom-scale-ingest-", dir=tmp_dir))
    try:
        log.info("writing %d events to %s", n_events, d)
        data = write_taobao(d / "UserBehavior.csv", n_events)
        log.info("wrote %.0f MB in %.1f s", data["csv_mb"], data["generate_s"])
        cmd = [sys.executable, "-m", "bench.scale_ingest_bench", "--worker",
               str(d / "UserBehavior.csv"), "--work", str(d / "work"),
               "--batch-bytes", str(batch_bytes), "--workers", str(workers)] + (["--shards", str(shards)] if shards else [])
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        res = json.loads(proc.stdout)
        total = res["total"]
        rss = max(total["peak_rss_mb_main_process"], total["peak_rss_mb_with_workers_sampled"])
        target = total["events_per_s"] >= 1_000_000 and rss <= 12_000
        return {"data": data, "ingest": res, "target_met": bool(target)}
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.scale_ingest_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--tmp-dir", default=None, help="where to write the CSV and the shards")
    ap.add_argument("--shards", type=int, default=None, help="default: one per 64 MB of CSV")
    ap.add_argument("--batch-bytes", type=int, default=16 << 20)
    ap.add_argument("--workers", type=int, default=2, help="pass-2 processes (default 2)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.shards, args.batch_bytes,
                                args.workers)))
        return
    setup_logging()
    t0 = time.perf_counter()
    load = round(os.getloadavg()[0], 2)
    results = run(args.events, args.tmp_dir, args.shards, args.batch_bytes, args.workers)
    results["load_avg_1m_start"] = load
    params = {"events": args.events, "shards": args.shards or "auto",
              "batch_bytes": args.batch_bytes, "workers": args.workers, "order": "shoppers at random (not grouped)"}
    emit(envelope("scale_ingest", params, results, round(time.perf_counter() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
