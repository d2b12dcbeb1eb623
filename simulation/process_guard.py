"""Stop what a simulation started, even when the simulation itself is killed.

Ray's raylet starts a dashboard agent and a runtime-env agent as its children. When the process
that started Ray is killed with SIGKILL, the raylet and the actors die with it, but those two
agents do not (measured with Ray 2.55: both still running minutes later, about 190 MB).

``guard_descendants()`` starts a small watcher process in a session of its own. While the block
runs, the watcher remembers every process started under this one (those that existed before
are left alone). When the block ends, it gives them ``grace`` seconds to exit by themselves; when
this process dies instead, it stops them at once: SIGTERM, then SIGKILL. Each is stopped by pid,
after checking its start time, so a pid the system has since reused is never signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the watcher looks for new processes under the guarded one


@contextlib.contextmanager
def guard_descendants(grace: float = 5.0) -> Iterator[subprocess.Popen]:
    """Within the block, every new process under this one is stopped when the block ends
    (after ``grace`` seconds) or when this process dies (at once). Yields the watcher."""
    watcher = subprocess.Popen(
        [sys.executable, "-m", "simulation.process_guard", str(os.getpid()), str(float(grace))],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        yield watcher
    finally:
        try:
            assert watcher.stdin is not None
            watcher.stdin.write(b"done\n")
            watcher.stdin.close()
        except OSError:  # the watcher is gone already
            pass


def _alive(procs: dict[int, float]) -> list:
    """The remembered processes still running (pid and start time both match)."""
    import psutil

    out = []
    for pid, started in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _ppid(p) -> int:
    try:
        return int(p.ppid())
    except Exception:  # noqa: BLE001 - psutil.Error and gone processes alike: search it itself
        return -1


def _stop(procs: dict[int, float], grace: float) -> None:
    """Wait up to ``grace`` s for ``procs`` to exit, then SIGTERM, then (3 s on) SIGKILL."""
    deadline = time.monotonic() + grace
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        left = _alive(procs)
        if not left:
            return
        for p in left:
            with contextlib.suppress(Exception):
                p.send_signal(sig)
        end = time.monotonic() + wait
        while _alive(procs) and time.monotonic() < end:
            time.sleep(0.1)


def watch(parent_pid: int, grace: float) -> None:
    """The watcher's loop: remember what appears under ``parent_pid``; stop it at the end."""
    import psutil

    me = os.getpid()
    parent = psutil.Process(parent_pid)
    parent_started = parent.create_time()
    # what started before this watcher is not the block's (it may start before we look)
    my_start = psutil.Process(me).create_time()
    before = set()
    for p in parent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.create_time() < my_start:
                before.add(p.pid)
    seen: dict[int, float] = {}
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.buffer.fileno(), selectors.EVENT_READ)

    while True:
        if _alive({parent_pid: parent_started}):
            # descendants of the parent are found from it; only those that lost their parent
            # (daemonised, reparented) are searched from themselves: one pass over each process
            alive = _alive(seen)
            known = {parent_pid} | {p.pid for p in alive}
            roots = [parent] + [p for p in alive if _ppid(p) not in known]
            for root in roots:
                with contextlib.suppress(psutil.Error):
                    for p in root.children(recursive=True):
                        if p.pid != me and p.pid not in before and p.pid not in seen:
                            with contextlib.suppress(psutil.Error):
                                seen[p.pid] = p.create_time()
        else:
            _stop(seen, 0.0)
            return
        if sel.select(POLL_SECONDS):
            data = os.read(sys.stdin.buffer.fileno(), 64)
            # "done": the block ended; end of input: the guarded process is gone
            _stop(seen, grace if data else 0.0)
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is for the simulation
    watch(int(sys.argv[1]), float(sys.argv[2]))
