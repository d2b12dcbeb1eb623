"""The live scoring commands of a site: ``serve`` (HTTP) and ``stream`` (NDJSON on stdin/stdout)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import queue
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError

STREAM_BATCH = 512  # lines scored together at most when they arrive faster than they are scored


def _scorer(args: argparse.Namespace) -> Any:
    from seqanom_core.detector import SequenceDetector
    from seqanom_core.live.engine import LiveScorer
    from simulation.cli.inputs import check_paths

    check_paths({"model": args.model}, {}, dirs=["model"])  # a symlink loop: one line

    det = SequenceDetector.load(args.model, device=args.device, progress=False)
    return LiveScorer(det, max_shoppers=args.max_shoppers, idle_ttl=args.idle_ttl)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The bearer token in ``path`` (its first line, stripped); ConfigError when empty."""
    from simulation.cli.inputs import check_input_file

    check_input_file(path, "--token-file")  # a FIFO would block before the server starts
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--token-file {path}: cannot read it: {err}") from err
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token must have at least 16 characters")
    return token


def check_listen(host: str, port: int) -> None:
    """Refuse, before the model loads, a --host that does not resolve or a --host/--port this
    process cannot listen on (uvicorn would exit 1 after 'serving ...' was printed); the
    address is only bound for the check, so a port taken a moment later still fails there."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as err:
        raise ConfigError(f"--host {host}: not an address to listen on ({err})") from err
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            s.bind(addr)
        except OSError as err:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                              f"({err.strerror or err})") from err


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve live scoring over HTTP: POST /v1/events, GET|DELETE /v1/shoppers/ID, GET /v1/flagged,
    /healthz, /metrics (Prometheus), the live page at /, the API schema at /openapi.json."""
    import uvicorn

    from seqanom_core.live.service import create_app

    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be 0..65535, not {args.port}")
    if args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be at least 1024, not {args.max_body_bytes}")
    token = read_token(args.token_file) if args.token_file else None
    check_listen(args.host, args.port)
    if not _is_loopback(args.host) and token is None:
        print(f"seqanom serve: warning: listening on {args.host} without --token-file: anyone "
              "who reaches it can post events and read scores", file=sys.stderr)
    scorer = _scorer(args)
    app = create_app(scorer, token=token, max_body_bytes=args.max_body_bytes,
                     model_name=str(args.model))
    print(f"serving {args.model} on http://{args.host}:{args.port} (threshold "
          f"{scorer.threshold:.3f}; flagged shoppers at /, API schema at /openapi.json)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Score NDJSON events from stdin (one JSON object a line, the canonical schema) and write
    one NDJSON result a line to stdout, as they arrive: any broker's console consumer can pipe
    into it. A bad or out-of-order line is reported on stderr (its line number and field),
    counted and skipped; the exit status is then 2."""
    from seqanom_core.live.events import EventError, parse_event

    scorer = _scorer(args)
    lines: queue.Queue[tuple[int, str] | None] = queue.Queue(maxsize=4 * STREAM_BATCH)

    def reader() -> None:
        for number, line in enumerate(sys.stdin, start=1):
            if line.strip():
                lines.put((number, line))
        lines.put(None)

    threading.Thread(target=reader, daemon=True, name="seqanom-stdin").start()
    scored = rejected = 0
    done = False
    while not done:
        batch = [lines.get()]
        while batch[-1] is not None and len(batch) < STREAM_BATCH and not lines.empty():
            batch.append(lines.get_nowait())
        if batch[-1] is None:
            done = True
            batch.pop()
        events, last_times = [], {}  # last_times: of the batch's accepted lines, per shopper
        for number, line in batch:  # type: ignore[misc]
            try:
                event = parse_event(json.loads(line), 0)
                scorer.check_order([event], last_times)
            except (ValueError, EventError) as err:
                rejected += 1
                print(f"seqanom stream: line {number}: {_reason(err)}", file=sys.stderr)
                continue
            events.append(event)
        if events:
            out = scorer.score(events)
            sys.stdout.write("".join(json.dumps(r) + "\n" for r in out))
            sys.stdout.flush()
            scored += len(events)
    print(f"seqanom stream: scored {scored} events of {len(scorer.shoppers)} shoppers held; "
          f"rejected {rejected} lines", file=sys.stderr)
    return 2 if rejected else 0


def _reason(err: Exception) -> str:
    from seqanom_core.live.events import EventError

    if isinstance(err, EventError):
        return (f"field '{err.field}': " if err.field else "") + err.message
    return f"not a JSON object: {err}"


def add_live_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register serve / stream with the seqanom parser's ``add``."""
    for name, fn, help_ in (("serve", cmd_serve, "score events live over HTTP"),
                            ("stream", cmd_stream, "score NDJSON events from stdin live")):
        p = add(name, fn, help_)
        p.add_argument("--model", required=True, metavar="MODEL_DIR",
                       help="a model directory (seqanom train, a federated run's model/ or a "
                            "calibrated checkpoint)")
        p.add_argument("--max-shoppers", type=int, default=100_000, metavar="N",
                       help="shoppers held at most; the least recently seen are forgotten first "
                            "(default 100000, under 1 GB)")
        p.add_argument("--idle-ttl", type=float, default=None, metavar="SECONDS",
                       help="forget a shopper after this long without events (default: never)")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        if name == "serve":
            p.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1: this machine only)")
            p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
            p.add_argument("--token-file", metavar="F",
                           help="require 'Authorization: Bearer TOKEN' with the token in F")
            p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                           help="larger request bodies are refused with 413 (default 1 MiB)")
