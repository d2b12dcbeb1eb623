"""Warm ClientApp starts for a deployed site: a fresh process per message, forked ready-made.

Flower's SuperNode (subprocess isolation) has ``flower-superexec`` start one ``flwr-clientapp``
process per message, found by name on PATH, and does not wait for it. Each such process paid
for importing torch, Opacus, pyarrow and Flower again (measured 2026-12-07: about 3 of the 3.7
CPU-seconds a ClientApp process spent before its first line of seqanom code).

``seqanom supernode`` (default ``--clientapp-start warm``) starts this module's *launcher* next
to the SuperNode, and puts a directory first on the SuperNode's PATH whose ``flwr-clientapp`` is
a small standard-library script (``write_shim``). The script hands its arguments, environment
and working directory to the launcher over a Unix socket and exits. The launcher has imported
the third-party libraries once; for each request it forks a child that runs Flower's own
``flwr-clientapp`` entry point with those arguments. So every message still runs in its own
process, started from a clean state, and the seqanom code itself is still imported from the app
Flower installed for the run (the FAB), never preloaded. If the launcher is not there, the script
runs the real ``flwr-clientapp`` instead.

The launcher exits when the SuperNode process it serves is gone, and with its process group.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

#: imported once by the launcher; never seqanom's own modules (those come from the run's FAB)
PRELOAD = ("numpy", "torch", "pyarrow", "pyarrow.parquet", "pyarrow.compute", "opacus",
           "flwr.app", "flwr.clientapp", "flwr.supernode.cli.flwr_clientapp")
ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"
SOCKET_NAME = "launcher.sock"

SHIM = """#!{python} -IS
# seqanom's warm ClientApp start: hand this start to the launcher (client/warm_clientapp.py)
import json, os, socket, sys
request = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}})
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect({socket_path!r})
        s.sendall(request.encode() + b"\\n")
        reply = s.makefile().readline()
except OSError:
    reply = ""
if not reply.startswith("ok"):  # no launcher: a cold start, as without seqanom's launcher
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def write_shim(directory: Path, real: str, python: str = sys.executable) -> Path:
    """Write ``directory/flwr-clientapp`` (the script above); returns the launcher's socket path."""
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / SOCKET_NAME
    shim = directory / "flwr-clientapp"
    shim.write_text(SHIM.format(python=python, socket_path=str(socket_path), real=real))
    shim.chmod(0o755)
    return socket_path


def _entry(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _run_child(request: dict, entry) -> int:
    """In the forked child: become the requested ``flwr-clientapp`` process; its exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["flwr-clientapp", *request["argv"]]
    try:
        entry()
        return 0
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the process' last word, as an uncaught exception
        traceback.print_exc()
        return 1


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(socket_path: Path, watch_pid: int, entry_ref: str = ENTRY,
          preload: tuple[str, ...] = PRELOAD) -> None:
    """Preload, then fork one child per request until ``watch_pid`` is no longer the parent."""
    t0 = time.monotonic()
    for name in preload:
        importlib.import_module(name)
    entry = _entry(entry_ref)
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    server.listen(64)
    server.settimeout(1.0)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(f"warm ClientApp launcher ready: {len(preload)} modules preloaded in "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    try:
        while not stopping and os.getppid() == watch_pid:
            _reap()
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    request = json.loads(conn.makefile().readline())
                except ValueError:
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    server.close()
                    conn.close()
                    code = _run_child(request, entry)
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
                conn.sendall(f"ok {pid}\n".encode())
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)
        shim = socket_path.parent / "flwr-clientapp"
        if shim.is_file():  # the SuperNode falls back to the real flwr-clientapp on PATH
            shim.unlink(missing_ok=True)
            try:
                socket_path.parent.rmdir()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m client.warm_clientapp",
                                 description="seqanom's warm ClientApp launcher (internal)")
    ap.add_argument("--socket", required=True, type=Path)
    ap.add_argument("--watch-pid", required=True, type=int)
    ap.add_argument("--entry", default=ENTRY)
    ap.add_argument("--preload", nargs="*", default=list(PRELOAD))
    args = ap.parse_args(argv)
    serve(args.socket, args.watch_pid, args.entry, tuple(args.preload))


if __name__ == "__main__":
    main()
