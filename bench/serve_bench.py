"""Live scoring against batch scoring on the same events: throughput, latency, memory per shopper.

    python -m bench.serve_bench [--shoppers 600] [--clients 1 8 32] [--requests 400]
        [--batch-events 100] [--model DIR --data FILE --format F] [--out JSON]

1. A model: by default a Transformer of the default shape (``ModelConfig()``, max_len 128) trained
   for one epoch on synthetic shoppers (speed does not depend on how well it learned), and the
   test events of other synthetic shoppers; or ``--model``/``--data``.
2. Batch baseline: ``seqanom score`` on the events file, as a command (wall time, start-up
   included) and in process (``score_shoppers`` alone, the stricter baseline).
3. Live: ``seqanom serve`` in its own process, driven by a load generator in another process
   (``--load-gen``, threads with one keep-alive connection each, every client posting the events
   of its own shoppers in time order): one event per request at each of ``--clients``
   (``--requests`` per client), then ``--batch-events`` events per request from 8 clients over
   all events (throughput). Latency is per request, p50/p99, as the client sees it.
4. Memory: the bytes that ``LiveScorer`` holds per shopper after every test shopper's events
   (tracemalloc, in process), scaled to 10,000 shoppers.

Ratios: ``live_vs_batch`` = live events/s (batched requests, 8 clients) / batch events/s, for
the in-process and the command baselines. Targets (issue): p99 <= 20 ms for one-event requests at
8 clients; live >= 0.5x batch; <= 10 KB per shopper.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from bench import emit, envelope, setup_logging

CLI = [sys.executable, "-m", "simulation.cli"]


def _prepare(root: Path, shoppers: int) -> tuple[Path, Path, str]:
    """Train the default-shape Transformer for one epoch; write the test events."""
    from seqanom_core.config import ModelConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.ingest import write_events
    from seqanom_core.sequences import split_events_by_shopper
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=shoppers, seed=0))
    train, test = split_events_by_shopper(events, 0.5, seed=0)
    det = make_detector("transformer", model_config=ModelConfig(),
                        train_config=TrainConfig(epochs=1, seed=0), progress=False).fit(train)
    det.save(root / "model")
    write_events(test, root / "test.parquet")
    return root / "model", root / "test.parquet", "seqanom"


def _json_events(data: Path, fmt: str) -> list[dict[str, Any]]:
    from seqanom_core.ingest import read_events
    from seqanom_core.schema import BEHAVIORS

    table = read_events(data, fmt)[0]
    cols = {c: table.column(c).to_pylist() for c in ("user_id", "item_id", "category_id",
                                                     "behavior", "timestamp")}
    order = sorted(range(table.num_rows), key=lambda i: (cols["timestamp"][i], i))
    return [{"user_id": cols["user_id"][i], "item_id": cols["item_id"][i],
             "category_id": cols["category_id"][i], "behavior": BEHAVIORS[cols["behavior"][i]],
             "timestamp": cols["timestamp"][i]} for i in order]


def _batch(model: Path, data: Path, fmt: str, n_events: int, root: Path) -> dict[str, Any]:
    from seqanom_core.detector import SequenceDetector
    from seqanom_core.ingest import read_events
    from seqanom_core.sequences import build_sequences

    t0 = time.perf_counter()
    subprocess.run([*CLI, "-q", "score", "--model", str(model), "--data", str(data), "--format",
                    fmt, "--out", str(root / "scores.csv")], check=True, capture_output=True)
    command_s = time.perf_counter() - t0
    det = SequenceDetector.load(model, device="cpu", progress=False)
    seqs = build_sequences(read_events(data, fmt)[0], det.tokenizer_config)
    t0 = time.perf_counter()
    det.score_shoppers(seqs)
    inproc_s = time.perf_counter() - t0
    return {"events": n_events, "command_s": round(command_s, 3),
            "command_events_per_s": round(n_events / command_s, 1),
            "in_process_s": round(inproc_s, 3),
            "in_process_events_per_s": round(n_events / inproc_s, 1)}


def _memory(model: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    from seqanom_core.detector import SequenceDetector
    from seqanom_core.live.engine import LiveScorer
    from seqanom_core.live.events import parse_events

    scorer = LiveScorer(SequenceDetector.load(model, device="cpu", progress=False))
    parsed = parse_events(events)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for k in range(0, len(parsed), 2000):
        scorer.score(parsed[k:k + 2000])
    del parsed
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per = held / max(len(scorer.shoppers), 1)
    lengths = [st.n for st in scorer.shoppers.values()]
    return {"shoppers": len(scorer.shoppers), "mean_events_per_shopper": round(np.mean(lengths), 1),
            "max_events_per_shopper": int(np.max(lengths)), "bytes_per_shopper": round(per),
            "mb_per_10000_shoppers": round(per * 10_000 / 2**20, 1)}


def load_gen(url: str, events_file: Path, clients: int, per_request: int,
             max_requests: int | None) -> dict[str, Any]:
    """Post events from ``clients`` threads (each its own shoppers, in time order); latencies."""
    events = json.loads(events_file.read_text())
    host, port = url.split("//")[1].split(":")
    groups: list[list[dict]] = [[] for _ in range(clients)]
    for e in events:  # shoppers spread over clients by id: each client keeps its shoppers' order
        groups[hash(str(e["user_id"])) % clients].append(e)
    latencies: list[float] = []
    sent = [0]
    lock = threading.Lock()
    errors: list[str] = []

    def client(mine: list[dict]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        local, n = [], 0
        chunks = [mine[k:k + per_request] for k in range(0, len(mine), per_request)]
        for chunk in chunks[:max_requests]:
            body = json.dumps(chunk)
            t0 = time.perf_counter()
            conn.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            local.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
            n += len(chunk)
        conn.close()
        with lock:
            latencies.extend(local)
            sent[0] += n

    threads = [threading.Thread(target=client, args=(g,)) for g in groups]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "events_per_request": per_request, "requests": len(latencies),
            "events": sent[0], "wall_s": round(wall, 3), "events_per_s": round(sent[0] / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": len(errors)}


def _serve(model: Path, events: list[dict[str, Any]], root: Path, clients: list[int],
           requests: int, batch_events: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from process_tree import free_port, stop_trees

    events_file = root / "events.json"
    out = []
    runs = [(c, 1, requests) for c in clients] + [(8, batch_events, None)]
    for c, per, limit in runs:
        port = free_port()  # a fresh service per run: every run starts from no shopper state
        proc = subprocess.Popen([*CLI, "serve", "--model", str(model), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(port, proc)
            # one-event requests replay each client's first events; batched ones replay all
            events_file.write_text(json.dumps(events))
            gen = subprocess.run([sys.executable, "-m", "bench.serve_bench", "--load-gen",
                                  f"http://127.0.0.1:{port}", "--events-file", str(events_file),
                                  "--gen-clients", str(c), "--gen-per-request", str(per),
                                  *(["--gen-max-requests", str(limit)] if limit else [])],
                                 check=True, capture_output=True, text=True)
            out.append(json.loads(gen.stdout))
        finally:
            stop_trees([proc], timeout=15)
    return out


def _wait(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"seqanom serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("seqanom serve did not start")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.serve_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--shoppers", type=int, default=600, help="synthetic shoppers (half tested)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=200, help="one-event requests per client")
    ap.add_argument("--batch-events", type=int, default=100, help="events per batched request")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--format", default="seqanom")
    ap.add_argument("--out")
    ap.add_argument("--load-gen", help=argparse.SUPPRESS)
    ap.add_argument("--events-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--gen-clients", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gen-per-request", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gen-max-requests", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load_gen:
        print(json.dumps(load_gen(args.load_gen, args.events_file, args.gen_clients,
                                  args.gen_per_request, args.gen_max_requests)))
        return
    setup_logging()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model:
            model, data, fmt = args.model, args.data, args.format
        else:
            model, data, fmt = _prepare(root, args.shoppers)
        events = _json_events(data, fmt)
        batch = _batch(model, data, fmt, len(events), root)
        live = _serve(model, events, root, args.clients, args.requests, args.batch_events)
        memory = _memory(model, events)
    single = {r["clients"]: r for r in live if r["events_per_request"] == 1}
    batched = next(r for r in live if r["events_per_request"] > 1)
    results = {
        "batch": batch, "live": live, "memory": memory,
        "ratios": {
            "live_vs_batch_in_process": round(batched["events_per_s"]
                                              / batch["in_process_events_per_s"], 3),
            "live_vs_batch_command": round(batched["events_per_s"]
                                           / batch["command_events_per_s"], 3)},
        "targets": {
            "p99_ms_one_event_8_clients": single.get(8, {}).get("p99_ms"),
            "p99_le_20ms": single.get(8, {}).get("p99_ms", 1e9) <= 20,
            "live_ge_half_batch": batched["events_per_s"] >= 0.5 * batch["in_process_events_per_s"],
            "state_le_10kb": memory["bytes_per_shopper"] <= 10_240},
    }
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
              if not k.startswith(("gen_", "load_", "events_")) and v is not None and k != "out"}
    params["model"] = str(args.model or "default Transformer (ModelConfig()), 1 epoch")
    emit(envelope("serve_bench", params, results, round(time.perf_counter() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
