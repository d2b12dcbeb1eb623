"""Processes a test starts: free loopback ports, and stopping whole process trees by pid.

Importable from every test directory (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterable

import psutil


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    """The process and everything it started that is still alive (other sessions included)."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_trees(procs: Iterable[subprocess.Popen], sig: int = signal.SIGTERM,
               timeout: float = 20) -> None:
    """Stop each process, its process group and every descendant, by pid; after ``timeout``
    seconds SIGKILL whatever lingers."""
    procs = list(procs)
    tree = [p for proc in procs for p in descendants(proc)]
    for p in tree:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """``stop_trees`` for one process."""
    stop_trees([proc], sig, timeout)


def run_in_group(cmd: list[str], timeout: float, **popen: object) -> str:
    """Run ``cmd`` in its own session (output captured); stop its tree by pid if it is still
    running when the call ends (time out, test failure). Asserts exit 0; returns the output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            stop_tree(proc, signal.SIGKILL)
    assert proc.returncode == 0, output[-3000:]
    return output
