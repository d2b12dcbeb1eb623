"""The warm ClientApp launcher (client/warm_clientapp.py): the ``flwr-clientapp`` script it puts
on the SuperNode's PATH hands each start to the launcher, which forks a child running the entry
point with the script's arguments, environment and working directory; without a launcher the
script runs the real executable; the launcher stops when the process it serves is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from process_tree import stop_tree

from client.warm_clientapp import write_shim

REPO = Path(__file__).resolve().parents[2]
RECORD_ENTRY = "tests_warm_entry:record"
ENTRY_MODULE = '''
import json, os, sys
def record():
    out = os.environ["WARM_RECORD"]
    with open(out, "w") as f:
        json.dump({"argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(),
                   "ppid": os.getppid(), "torch": "torch" in sys.modules,
                   "mark": os.environ.get("WARM_MARK")}, f)
    sys.exit(int(os.environ.get("WARM_EXIT", "0")))
'''


def wait_for(path: Path, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < end, f"{path} never written"
        time.sleep(0.05)
    time.sleep(0.1)
    return json.loads(path.read_text())


@pytest.fixture
def launcher(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "tests_warm_entry.py").write_text(ENTRY_MODULE)
    real = tmp_path / "real-flwr-clientapp"
    real.write_text(f"#!/bin/sh\necho cold \"$@\" > {tmp_path / 'cold.txt'}\n")
    real.chmod(0o755)
    shim_dir = tmp_path / "shim"
    sock = write_shim(shim_dir, str(real))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "mods"), str(REPO)]))
    # the launcher serves this test process (its parent), as it serves the SuperNode
    proc = subprocess.Popen([sys.executable, "-m", "client.warm_clientapp", "--socket", str(sock),
                             "--watch-pid", str(os.getpid()), "--entry", RECORD_ENTRY,
                             "--preload", "json"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "launcher ready" in proc.stderr.readline()
        yield proc, shim_dir, tmp_path
    finally:
        stop_tree(proc)


def test_script_hands_the_start_to_the_launcher(launcher):
    proc, shim_dir, tmp = launcher
    record = tmp / "record.json"
    t0 = time.monotonic()
    res = subprocess.run([str(shim_dir / "flwr-clientapp"), "--token", "abc", "--insecure"],
                         env=dict(os.environ, WARM_RECORD=str(record), WARM_MARK="m1"),
                         cwd=tmp, timeout=60)
    assert res.returncode == 0
    got = wait_for(record)
    assert got["argv"] == ["flwr-clientapp", "--token", "abc", "--insecure"]
    assert got["cwd"] == str(tmp) and got["mark"] == "m1"
    assert got["ppid"] == proc.pid  # forked by the launcher, not a fresh interpreter
    assert not (tmp / "cold.txt").exists()
    # each start is its own process; a child's exit code does not stop the launcher
    record.unlink()
    subprocess.run([str(shim_dir / "flwr-clientapp"), "--token", "def"], cwd=tmp, timeout=60,
                   env=dict(os.environ, WARM_RECORD=str(record), WARM_EXIT="3"), check=True)
    second = wait_for(record)
    assert second["argv"][-1] == "def" and second["pid"] != got["pid"]
    assert proc.poll() is None
    assert time.monotonic() - t0 < 60


def test_without_launcher_the_script_starts_the_real_executable(launcher):
    proc, shim_dir, tmp = launcher
    stop_tree(proc)
    proc.wait(timeout=30)
    shim = tmp / "shim-copy"
    shim.mkdir()
    # the launcher removed its script on exit; a script whose launcher is gone falls back
    write_shim(shim, str(tmp / "real-flwr-clientapp"))
    subprocess.run([str(shim / "flwr-clientapp"), "--token", "xyz"], cwd=tmp, timeout=60,
                   check=True)
    assert (tmp / "cold.txt").read_text().split() == ["cold", "--token", "xyz"]
    assert not (shim_dir / "flwr-clientapp").exists()


def test_launcher_stops_when_the_process_it_serves_is_gone(tmp_path):
    sock = write_shim(tmp_path / "shim", "/bin/false")
    # a parent that starts the launcher for itself and exits at once
    parent = subprocess.run([sys.executable, "-c", (
        "import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-m', "
        f"'client.warm_clientapp', '--socket', {str(sock)!r}, '--watch-pid', str(os.getpid()), "
        "'--preload', 'json'], stderr=subprocess.DEVNULL); print(p.pid)")],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO)
    pid = int(parent.stdout)
    end = time.monotonic() + 60
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < end, "launcher outlived the process it served"
        time.sleep(0.2)
