"""The central team's commands: ``seqanom credentials``, ``superlink``, ``connection`` (deployment)
and ``rounds`` (a run's progress from its checkpoints, ``server/round_progress.py``).

``superlink`` builds the ``flower-superlink`` command line (TLS on every API, SuperNode
authentication on, no runtime dependency installation) from a credentials directory and runs it
in place of this process (same pid, so stopping it stops the SuperLink). Without certificates it
refuses to start unless ``--insecure`` is given, and then prints a loud warning first.
``connection`` writes the named SuperLink connection that ``flwr run``, ``flwr ls`` and
``flwr supernode register`` use (``$FLWR_HOME/config.toml``, default ``~/.flwr``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from seqanom_core.errors import ConfigError
from simulation.cli.flower_launch import (
    existing_file,
    flower_env,
    flower_executable,
    host_name,
    host_port,
    insecure_warning,
    launch,
    port_number,
)
from simulation.cli.inputs import check_paths


def _output_file(path: str, option: str) -> str:
    """Absolute path of a file to write (its directory is created; not a directory itself)."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a directory (give a file path)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create its directory ({err.strerror})") from err
    return str(p)


# --------------------------------------------------------------------------- commands
def cmd_credentials(args: argparse.Namespace) -> int:
    """Create a private CA, the SuperLink's TLS certificate and one ECDSA key pair per site
    (existing files are kept, so sites can be added later), then print how to register the
    sites' public keys."""
    from server.credentials import create_credentials

    report = create_credentials(args.out, args.sites, hosts=args.host, days=args.days)
    paths = report.paths
    for p in report.created:
        print(f"created {p}{'  (private, 0600)' if p.suffix == '.key' else ''}")
    for p in report.kept:
        print(f"kept    {p} (already there)")
    print(f"\nSuperLink: seqanom superlink --credentials {paths.root} ...  (keep ca.key offline)")
    print(f"Every site and the flwr CLI trust {paths.ca_cert}; each site gets only its own "
          f"sites/<site>/ directory.")
    print("Register each site's public key with the running SuperLink (connection "
          f"'{args.connection}', see 'seqanom connection --help'):")
    for site in args.sites:
        print(f"  flwr supernode register {paths.site_public_key(site)} {args.connection} "
              f"--name {site}")
    return 0


def cmd_superlink(args: argparse.Namespace) -> int:
    """Start the SuperLink (Fleet, Control and Runtime APIs on --host:--port) with TLS and
    SuperNode authentication; the seqanom ServerApp is then started by `flwr run`."""
    exe = flower_executable("flower-superlink")
    argv = [exe, "--host", args.host, "--port", str(args.port),
            "--disable-runtime-dependency-installation"]
    files = [args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile]
    if args.credentials:
        from server.credentials import CredentialPaths

        if not Path(args.credentials).expanduser().is_dir():  # not its files, each named below
            raise ConfigError(f"--credentials {args.credentials}: no such directory")
        paths = CredentialPaths(Path(args.credentials))
        files = [f or str(d) for f, d in zip(files, (paths.ca_cert, paths.server_cert,
                                                      paths.server_key), strict=True)]
    if args.insecure:
        if any([args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile, args.credentials]):
            raise ConfigError("--insecure cannot be combined with certificates")
        insecure_warning("flower-superlink --insecure",
                         "SuperNode authentication is OFF: any process that reaches "
                         f"{args.host}:{args.port} can join the federation or submit runs.")
        argv.append("--insecure")
    else:
        if not all(files):
            raise ConfigError("the SuperLink needs TLS: give --credentials DIR (from 'seqanom "
                              "credentials') or --ssl-ca-certfile, --ssl-certfile and "
                              "--ssl-keyfile (or, on a test machine only, --insecure)")
        ca, cert, key = (existing_file(f, o, pem) for f, o, pem in zip(
            files, ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"),
            ("CERTIFICATE", "CERTIFICATE", "PRIVATE KEY"), strict=True))
        argv += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key,
                 "--enable-supernode-auth"]
    # the SuperLink writes its database and log: never onto a certificate or key (the
    # credentials directory itself may hold them)
    check_paths({"ssl_ca_certfile": files[0], "ssl_certfile": files[1], "ssl_keyfile": files[2]},
                {"database": args.database, "log_file": args.log_file})
    if args.database:
        argv += ["--database", _output_file(args.database, "--database")]
    if args.log_file:
        argv += ["--log-file", _output_file(args.log_file, "--log-file")]
    return launch(argv, flower_env(exe), args.dry_run)


def cmd_connection(args: argparse.Namespace) -> int:
    """Write a named SuperLink connection to Flower's configuration ($FLWR_HOME/config.toml,
    default ~/.flwr/config.toml): the address and CA that `flwr run`, `flwr ls` and `flwr
    supernode register` use."""
    from flwr.cli.flower_config import (  # the central CLI may import Flower; the library never does
        set_default_superlink_connection,
        write_superlink_connection,
    )
    from flwr.cli.typing import SuperLinkConnection
    from flwr.supercore.utils import get_flwr_home

    if args.insecure and args.root_certificates:
        raise ConfigError("--insecure cannot be combined with --root-certificates")
    if not args.insecure and not args.root_certificates:
        raise ConfigError("give --root-certificates CA.pem (or, on a test machine only, --insecure)")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        raise ConfigError(f"--name {args.name!r}: use letters, digits, '-' and '_'")
    if args.insecure:
        insecure_warning("flwr CLI connection without TLS",
                         "run submissions and SuperNode registrations are unauthenticated.")
    ca = (existing_file(args.root_certificates, "--root-certificates", "CERTIFICATE")
          if args.root_certificates else None)
    write_superlink_connection(SuperLinkConnection(
        name=args.name, address=args.address, root_certificates=ca,
        insecure=True if args.insecure else None))
    if args.default:
        set_default_superlink_connection(args.name)
    print(f"connection '{args.name}' -> {args.address} written to "
          f"{get_flwr_home() / 'config.toml'}{' (default)' if args.default else ''}")
    print(f"  flwr run . {args.name} --run-config 'num-rounds=5 checkpoint-dir=\"/abs/ckpt\"'")
    return 0


# --------------------------------------------------------------------------- parser
def cmd_rounds(args: argparse.Namespace) -> int:
    """Show a federated run's progress from its checkpoint directory (the run config's
    checkpoint-dir; RUN_DIR/checkpoints for 'seqanom simulate'): one line per completed round
    with its losses, AUROC (where sites have labels), sites that trained, declined (privacy
    budget) or were rejected, the worst site's cumulative epsilon (shopper level) and the
    site-level epsilon of central DP, the federated threshold and the round's seconds; then the
    privacy guarantees of the latest round. Each round's checkpoint is a model directory that
    'seqanom score --model' accepts."""
    from server.round_progress import (
        follow_rows,
        format_row,
        header,
        privacy_lines,
        read_round,
        read_rows,
    )

    root = Path(args.checkpoint_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such checkpoint directory")
    if args.interval <= 0:
        raise ConfigError(f"--interval must be a positive number of seconds, not {args.interval}")
    rows = read_rows(root)
    if args.json:
        last = read_round(Path(rows[-1]["checkpoint"])) if rows else {}
        print(json.dumps({"checkpoint_dir": str(root), "rounds": rows,
                          "privacy": last.get("privacy")}, indent=2))
        return 0
    print(f"checkpoints {root}: {len(rows)} completed round(s)")
    print(header())
    for row in rows:
        print(format_row(row))
    if args.follow:
        print("(following: a new line per completed round; Ctrl-C to stop)", flush=True)
        try:
            for row in follow_rows(root, args.interval, seen=len(rows)):
                print(format_row(row), flush=True)
                rows.append(row)
        except KeyboardInterrupt:
            pass
    if rows:
        for line in privacy_lines(read_round(Path(rows[-1]["checkpoint"]))):
            print(line)
        print(f"latest model: {rows[-1]['checkpoint']} (seqanom score --model accepts it)")
    return 0


def add_central_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register credentials / superlink / connection / rounds with the seqanom parser's ``add``."""
    p = add("credentials", cmd_credentials, "create the CA, SuperLink certificate and site keys")
    p.add_argument("--out", required=True, metavar="DIR", help="credentials directory")
    p.add_argument("--sites", nargs="+", required=True, metavar="SITE",
                   help="site names (one node-authentication key pair each)")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP", type=host_name,
                   help="extra SuperLink host name or IP for the certificate (repeatable); "
                        "localhost and 127.0.0.1 are always included")
    p.add_argument("--days", type=int, default=365, help="certificate validity")
    p.add_argument("--connection", default="seqanom",
                   help="connection name used in the printed register commands")

    p = add("superlink", cmd_superlink, "start the SuperLink with TLS and node authentication")
    p.add_argument("--credentials", metavar="DIR",
                   help="directory written by 'seqanom credentials' (ca.pem, superlink/server.*)")
    p.add_argument("--ssl-ca-certfile", metavar="PEM", help="CA certificate (overrides DIR)")
    p.add_argument("--ssl-certfile", metavar="PEM", help="server certificate (overrides DIR)")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="server private key (overrides DIR)")
    p.add_argument("--host", default="127.0.0.1", type=host_name,
                   help="address to listen on; 0.0.0.0 to serve sites on other machines "
                        "(its name must be in the certificate: credentials --host)")
    p.add_argument("--port", type=port_number, default=8000,
                   help="port of the Fleet, Control and Runtime APIs (all HTTPS)")
    p.add_argument("--database", metavar="PATH",
                   help="SQLite state file, so registered sites and runs survive a restart "
                        "(default: in memory)")
    p.add_argument("--log-file", metavar="PATH", help="also write the SuperLink log here")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no node authentication (test machines only; loud warning)")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")

    p = add("rounds", cmd_rounds, "show a federated run's rounds: losses, AUROC, sites, epsilon")
    p.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
    p.add_argument("--json", action="store_true", help="print the rounds as JSON")
    p.add_argument("--follow", action="store_true",
                   help="keep printing rounds as they complete (Ctrl-C to stop)")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                   help="with --follow: how often to look for new checkpoints")

    p = add("connection", cmd_connection, "write the flwr CLI's SuperLink connection")
    p.add_argument("--name", default="seqanom", help="connection name (flwr run . NAME)")
    p.add_argument("--address", required=True, metavar="HOST:PORT", type=host_port,
                   help="the SuperLink")
    p.add_argument("--root-certificates", metavar="CA.pem", help="CA that signed the SuperLink")
    p.add_argument("--insecure", action="store_true", help="no TLS (test machines only)")
    p.add_argument("--default", action="store_true", help="make it the default connection")
