"""What the deployment tests share: processes started in their own sessions with time-stamped logs,
the flwr CLI's JSON answers, the seqanom CLI's command line, and the messages a SuperNode handled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from process_tree import stop_trees

from bench.deploy_bench import Started

REPO = Path(__file__).resolve().parents[1]
FLWR = str(Path(sys.executable).parent / "flwr")


class Processes(Started):
    """The processes a test started, each in a new session (its pid is its process group);
    output time-stamped in ``logs/<name>.log`` (``bench.deploy_bench.Started``)."""

    def wait_for(self, name: str, text: str, timeout: float) -> None:
        """Until ``text`` shows in the process' log; fails if it exits or the time runs out."""
        try:
            super().wait_for(name, text, timeout)
        except RuntimeError as err:
            pytest.fail(str(err))

    def tails(self, n: int = 1500) -> str:
        return "\n".join(f"--- {k}\n{self.log(k)[-n:]}" for k in self.procs)

    def stop(self) -> list[int]:
        """SIGTERM every running process and its descendants, then SIGKILL stragglers."""
        stop_trees([p for p in self.procs.values() if p.poll() is None], timeout=15)
        for proc in self.procs.values():
            proc.wait()
        return []


def flwr(env: dict[str, str], *args: str, timeout: float = 120) -> dict:
    """A flwr CLI command with --format json; its JSON answer."""
    res = subprocess.run([FLWR, *args, "--format", "json"], env=env, cwd=REPO, text=True,
                         capture_output=True, timeout=timeout)
    try:
        return json.loads(res.stdout)
    except ValueError:
        pytest.fail(f"flwr {' '.join(args)}: exit {res.returncode}\n{res.stdout}\n{res.stderr}")



def seqanom(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulation.cli", *args]


def run_ok(argv: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{argv}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
