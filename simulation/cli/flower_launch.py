"""What the deployment commands share: Flower's executables and environment, the insecure-mode
warning, and the checks of file, host and port options."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from seqanom_core.errors import ConfigError

INSECURE_BANNER = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  WARNING: INSECURE MODE ({what})
!!  No TLS: model updates, metrics and run configs travel in plain text, and
!!  {detail}
!!  Use this only on an isolated test machine, never with real shopper data.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def flower_executable(name: str) -> str:
    """Path of a Flower console script: beside this Python first (the venv), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found beside {sys.executable} or on PATH; install the "
                          "federation extra (pip install -e '.[federation]')")
    return found


def flower_env(exe: str, **extra: str) -> dict[str, str]:
    """Environment for a Flower process: its bin directory first on PATH (SuperLink and SuperNode
    start ``flower-superexec`` by name) and no runtime dependency installation (``uv sync``
    would pull a CUDA torch)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(exe).parent) + os.pathsep + env.get("PATH", "")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.update(extra)
    return env


def launch(argv: list[str], env: dict[str, str], dry_run: bool) -> int:
    """Print the command; unless ``dry_run``, replace this process by it."""
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v and k != "PATH"}
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items()))
    print(f"{prefix} {shlex.join(argv)}".strip(), flush=True)
    if dry_run:
        return 0
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 1  # not reached


def insecure_warning(what: str, detail: str) -> None:
    """The loud warning printed before anything runs without TLS."""
    print(INSECURE_BANNER.format(what=what, detail=detail), file=sys.stderr, flush=True)


def existing_file(path: str | Path, option: str, pem: str | None = None) -> str:
    """Absolute path of an existing file; with ``pem`` ("CERTIFICATE" or "PRIVATE KEY"), the
    file must hold that PEM block (a .pub key or a CSV given by mistake fails here, not in the
    middle of a TLS handshake)."""
    from simulation.cli.inputs import check_input_file

    check_input_file(path, option)  # a symlink loop, a FIFO, a directory
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"{option} {path}: no such file")
    if pem is not None:
        try:
            with p.open("rb") as f:
                head = f.read(1 << 16)
        except OSError as err:
            raise ConfigError(f"{option} {path}: cannot read it ({err.strerror})") from err
        if f"{pem}-----".encode() not in head:
            raise ConfigError(f"{option} {path}: not a PEM {pem.lower()} file")
    return str(p)


def port_number(text: str) -> int:
    """argparse type of a TCP port: 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {port}")
    return port


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def host_name(text: str) -> str:
    """argparse type of a host name or IP address (IPv6 in brackets)."""
    if not _HOST.match(text):
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return text


def host_port(text: str) -> str:
    """argparse type of a ``HOST:PORT`` address."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    host_name(host)
    port_number(port)
    return text


