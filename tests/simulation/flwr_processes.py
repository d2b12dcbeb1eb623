"""Start and stop a loopback simulation SuperLink and ``flwr`` commands for the tests.

Everything started here runs in its own process group; ``process_tree.stop_tree`` stops the
group leader and every descendant by pid (the SuperLink spawns SuperExec, flwr-simulation and
Ray's processes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from process_tree import stop_tree

BIN = Path(sys.executable).parent


def flwr_env(home: Path) -> dict[str, str]:
    """Environment of every flwr process of a test: its own FLWR_HOME, no runtime installs."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_DISABLE_UPDATE_CHECK="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return env


def write_connection(home: Path, name: str, port: int) -> None:
    """A SuperLink connection ``name`` to the loopback simulation SuperLink on ``port``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')


def start_superlink(home: Path, port: int, log: Path, **env: str) -> subprocess.Popen:
    """A simulation SuperLink on loopback (plaintext: loopback test only); waits until it listens.
    ``env``: more environment variables (``RAY_ADDRESS``: run on that Ray cluster)."""
    cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
           "--port", str(port), "--database", str(home / "superlink.db")]
    proc = subprocess.Popen(cmd, env=flwr_env(home) | env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}: "
                               f"{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.5)
    stop_tree(proc)
    raise RuntimeError(f"flower-superlink did not listen on {port} within 90 s")


def flwr(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a ``flwr`` CLI command with the test's FLWR_HOME, from the project root."""
    return subprocess.run([str(BIN / "flwr"), *args], env=flwr_env(home), capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def runs(home: Path, connection: str) -> list[dict]:
    """``flwr ls --format json``: the runs the SuperLink knows."""
    out = flwr(home, "ls", connection, "--format", "json", timeout=120)
    data = json.loads(out.stdout)
    if not data.get("success"):
        raise RuntimeError(f"flwr ls failed: {out.stdout} {out.stderr}")
    return data["runs"]


def wait_for_status(home: Path, connection: str, run_id: str, timeout: float) -> dict:
    """Poll ``flwr ls`` until the run has finished; returns its entry."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for r in runs(home, connection):
            if str(r["run-id"]) == str(run_id) and str(r["status"]).startswith("finished"):
                return r
        time.sleep(2)
    raise TimeoutError(f"run {run_id} not finished within {timeout} s")
