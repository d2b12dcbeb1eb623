"""docker/README.md run as written, up to what needs a Docker engine, makes what compose mounts.

Every ```bash block of the README runs in order (``bash -e``, from the root of a scratch copy
that holds ``docker/`` without ``certs/`` and ``sites/``), except the blocks that call
``docker``: those need an engine. ``seqanom`` is this checkout's CLI; ``sudo`` and ``flwr`` are
stand-ins that record their arguments (the chown needs root, registering a key needs a running
SuperLink); ``docker`` is a stand-in that fails, so a block that calls it unrecognised fails the
test. Then: before the first engine block every file compose.yaml and compose.cuda.yaml mount
exists, each site's ``data-path`` is a parquet file of events, the SuperLink certificate chains
to the mounted CA and completes a TLS handshake for the host the sites dial (and for the flwr
connection's address), the chown covers every private key a container reads, and each
registered ``.pub`` is the public half of the key mounted into the site of that name. Nothing
is hard-coded that the README or the compose files say: a drift in either fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILES = ("compose.yaml", "compose.cuda.yaml")
_FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
_DOCKER_CALL = re.compile(r"(?:^|[;&|(])\s*docker\s", re.M)  # `cd docker` is not a call
_RECORD = 'printf %s "$(basename "$0")" >>"$SHIM_LOG"\n' \
          'for a in "$@"; do printf "\\t%s" "$a" >>"$SHIM_LOG"; done\necho >>"$SHIM_LOG"\n'
_SHIMS = {
    "seqanom": _RECORD + 'exec "$SEQANOM_PYTHON" -m simulation.cli "$@"\n',
    "sudo": _RECORD,
    "flwr": _RECORD,
    "docker": 'echo "docker needs an engine: this block should have been skipped" >&2; exit 97\n',
}


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of a markdown text, in order (indented ones dedented)."""
    return [textwrap.dedent(body) for _, lang, body in _FENCE.findall(text) if lang == "bash"]


def needs_engine(block: str) -> bool:
    return bool(_DOCKER_CALL.search(block))


@dataclass
class Steps:
    root: Path  # the scratch repository root the blocks ran in
    calls: list[list[str]] = field(default_factory=list)  # [tool, arg, ...] of each shim call
    skipped: list[str] = field(default_factory=list)
    missing_at_engine: list[str] | None = None  # compose's files absent at the first engine block

    def calls_of(self, tool: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == tool]


def compose_doc(root: Path, name: str) -> dict:
    return yaml.safe_load((root / "docker" / name).read_text())


def referenced_files(root: Path) -> dict[str, Path]:
    """What both compose files read from the host: secret files, bind mounts, Dockerfiles."""
    out: dict[str, Path] = {}
    for name in COMPOSE_FILES:
        doc = compose_doc(root, name)
        for secret, spec in (doc.get("secrets") or {}).items():
            out[f"{name}: secret {secret}"] = root / "docker" / spec["file"]
        for svc_name, svc in doc["services"].items():
            for source, target in _binds(svc):
                out[f"{name}: {svc_name} mount {target}"] = root / "docker" / source
            build = svc.get("build") or {}
            if "dockerfile" in build:
                out[f"{name}: {svc_name} dockerfile"] = (
                    root / "docker" / build.get("context", ".") / build["dockerfile"])
    for what, path in out.items():
        assert "$" not in str(path), f"{what}: {path} (interpolated paths: extend this test)"
    return out


def _binds(svc: dict) -> list[tuple[str, str]]:
    """(host source, container target) of a service's bind mounts (short and long syntax)."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        elif v.get("type") == "bind":
            source, target = v["source"], v["target"]
        else:
            continue
        if source.startswith((".", "/", "~")):
            out.append((source, target))
    return out


def _flags(command: list[str]) -> dict[str, str]:
    """``--k=v`` and ``--k v`` arguments of a service command."""
    out, args = {}, [str(a) for a in command]
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            k, eq, v = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else "--"
            out[k] = v if eq else ("" if nxt.startswith("--") else nxt)
    return out


def host_file(root: Path, svc: dict, container_path: str) -> Path:
    """The host file a service sees at ``container_path`` (a secret or inside a bind mount)."""
    doc = compose_doc(root, "compose.yaml")
    for s in svc.get("secrets", []):
        if isinstance(s, dict) and s.get("target") == container_path:
            return root / "docker" / doc["secrets"][s["source"]]["file"]
    for source, target in _binds(svc):
        if PurePosixPath(container_path).is_relative_to(target):
            return root / "docker" / source / PurePosixPath(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is neither a secret nor inside a bind mount")


def sites(root: Path) -> dict[str, dict]:
    """compose.yaml's SuperNode services (those with an authentication key)."""
    return {n: s for n, s in compose_doc(root, "compose.yaml")["services"].items()
            if "auth-supernode-private-key" in _flags(s.get("command", []))}


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> Steps:
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(DOCKER, root / "docker", ignore=lambda d, names: (
        {"certs", "sites"} & set(names) if Path(d) == DOCKER else set()))
    bin_dir, log = root.parent / f"{root.name}-bin", root.parent / f"{root.name}-calls.log"
    bin_dir.mkdir()
    for name, body in _SHIMS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    (root.parent / f"{root.name}-home").mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "USER": "tester",
           "HOME": str(root.parent / f"{root.name}-home"), "PYTHONPATH": str(ROOT),
           "SEQANOM_PYTHON": sys.executable, "SHIM_LOG": str(log)}
    out = Steps(root)
    for block in bash_blocks((DOCKER / "README.md").read_text()):
        if needs_engine(block):
            if out.missing_at_engine is None:
                out.missing_at_engine = [f"{what}: {p.relative_to(root)}" for what, p in
                                         referenced_files(root).items() if not p.exists()]
            out.skipped.append(block)
            continue
        run = subprocess.run(["bash", "-e", "-c", block], cwd=root, env=env, text=True,
                             capture_output=True, timeout=180)
        assert run.returncode == 0, f"docker/README.md block failed:\n{block}\n{run.stderr[-3000:]}"
    out.calls = [line.split("\t") for line in log.read_text().splitlines()]
    return out


# --------------------------------------------------------------------------- the tests


def test_the_steps_before_the_engine_make_every_file_compose_mounts(steps):
    assert steps.skipped and "docker compose" in steps.skipped[0]
    assert steps.missing_at_engine == [], "\n".join(steps.missing_at_engine or [])
    commands = [c[0] for c in steps.calls_of("seqanom")]
    assert "credentials" in commands and "synth" in commands
    assert all(p.exists() for p in referenced_files(steps.root).values())


def test_each_site_reads_a_parquet_file_of_events_the_container_user_can_read(steps):
    assert len(sites(steps.root)) >= 2
    for name, svc in sites(steps.root).items():
        from flwr.common.config import parse_config_args

        cfg = parse_config_args([_flags(svc["command"])["node-config"]])
        data = host_file(steps.root, svc, cfg["data-path"])
        assert data.is_file(), f"{name}: data-path {cfg['data-path']} -> {data} missing"
        columns = set(pq.read_schema(data).names)
        assert {"user_id", "item_id", "category_id", "behavior", "timestamp"} <= columns
        assert pq.read_metadata(data).num_rows > 0
        for p in (data, data.parent):  # the containers run as uid 49999, not the host user
            assert p.stat().st_mode & stat.S_IROTH, f"{name}: {p} is not world-readable"


def test_superlink_certificate_verifies_for_the_host_the_sites_dial(steps):
    link = compose_doc(steps.root, "compose.yaml")["services"]["superlink"]
    flags = _flags(link["command"])
    ca, cert, key = (host_file(steps.root, link, flags[k])
                     for k in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile"))
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    server = x509.load_pem_x509_certificate(cert.read_bytes())
    server.verify_directly_issued_by(ca_cert)
    assert (load_pem_private_key(key.read_bytes(), None).public_key().public_numbers()
            == server.public_key().public_numbers()), f"{key} is not the key of {cert}"
    dialled = set()
    for name, svc in sites(steps.root).items():
        site_flags = _flags(svc["command"])
        dialled.add(site_flags["superlink"].rsplit(":", 1)[0])
        assert host_file(steps.root, svc, site_flags["root-certificates"]) == ca, name
    assert dialled == {"superlink"}  # compose's service name
    hosts = dialled | {_connection(steps)[1]["address"].rsplit(":", 1)[0]}
    for host in sorted(hosts):
        _handshake(ca, cert, key, host)  # raises SSLCertVerificationError when it does not
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "elsewhere.example")


def test_the_chown_covers_every_private_key_a_container_reads(steps):
    link = compose_doc(steps.root, "compose.yaml")["services"]["superlink"]
    keys = {host_file(steps.root, link, _flags(link["command"])["ssl-keyfile"]).resolve()}
    for svc in sites(steps.root).values():
        keys.add(host_file(steps.root, svc, _flags(svc["command"])["auth-supernode-private-key"])
                 .resolve())
    chowns = [c[1:] for c in steps.calls_of("sudo") if c[0] == "chown"]
    assert chowns, "docker/README.md gives no `sudo chown` for the containers' user"
    owned = {(steps.root / a).resolve() for c in chowns if c[0].startswith("49999")
             for a in c[1:] if not a.startswith("-")}
    assert keys <= owned, f"not given to uid 49999: {sorted(map(str, keys - owned))}"
    mounted = {p.resolve() for p in referenced_files(steps.root).values()}
    assert not any(p.name == "ca.key" for p in mounted | owned), "the CA key must stay out"


def test_registered_public_keys_are_the_halves_of_the_sites_mounted_keys(steps):
    conn_name, _ = _connection(steps)
    registered = {}
    for args in steps.calls_of("flwr"):
        if args[:2] == ["supernode", "register"]:
            assert args[3] == conn_name, f"registered through {args[3]}, not {conn_name}"
            registered[args[args.index("--name") + 1]] = steps.root / args[2]
    from flwr.common.config import parse_config_args

    by_name = {parse_config_args([_flags(s["command"])["node-config"]])["site-name"]: s
               for s in sites(steps.root).values()}
    assert set(registered) == set(by_name)
    for name, pub in registered.items():
        svc = by_name[name]
        key = host_file(steps.root, svc, _flags(svc["command"])["auth-supernode-private-key"])
        private = load_ssh_private_key(key.read_bytes(), None)
        assert (load_ssh_public_key(pub.read_bytes()).public_numbers()
                == private.public_key().public_numbers()), f"{pub} is not the pair of {key}"


def test_flwr_connection_trusts_the_mounted_ca_at_the_published_port(steps):
    _, conn = _connection(steps)
    link = compose_doc(steps.root, "compose.yaml")["services"]["superlink"]
    ca = host_file(steps.root, link, _flags(link["command"])["ssl-ca-certfile"])
    assert Path(conn["root-certificates"]).is_absolute()
    assert Path(conn["root-certificates"]).resolve() == ca.resolve()
    published = {p.rsplit(":", 1)[-1] for p in link["ports"]}
    assert conn["address"].rsplit(":", 1)[1] in published


# --------------------------------------------------------------------------- helpers


def _connection(steps: Steps) -> tuple[str, dict]:
    """The (only) connection the README's `seqanom connection` step wrote to ~/.flwr."""
    names = [c[c.index("--name") + 1] for c in steps.calls_of("seqanom") if c[0] == "connection"]
    assert len(names) == 1, f"expected one `seqanom connection` step, got {names}"
    home = Path(steps.root.parent / f"{steps.root.name}-home")
    config = tomllib.loads((home / ".flwr" / "config.toml").read_text())
    return names[0], config["superlink"][names[0]]


def _handshake(ca: Path, cert: Path, key: Path, host: str) -> None:
    """A TLS handshake with ``cert``/``key`` that a client trusting only ``ca`` accepts for
    ``host`` (Python's own verification: chain, validity, host name)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server.wrap_socket(conn, server_side=True):
                    pass
            except OSError:  # the client's verdict is the one that counts
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname=host):
                pass
        finally:
            thread.join(10)
