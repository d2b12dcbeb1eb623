"""The merchant site's deployment command: ``seqanom supernode``.

It builds the ``flower-supernode`` command line for one site — TLS root certificate, the site's
node-authentication private key, and the site's settings in ``--node-config`` (data path, format,
ledger path, privacy budget, device, site name; see ``client/app.py``) — checks the files exist,
and runs it in place of this process. Without a root certificate and a private key it refuses to
start unless ``--insecure`` is given, and then prints a loud warning first. Nothing here imports
flwr (the SuperNode does, in its own process).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from seqanom_core.config import is_positive_number
from seqanom_core.errors import ConfigError
from simulation.cli.flower_launch import (
    existing_file,
    flower_env,
    flower_executable,
    host_port,
    insecure_warning,
    launch,
    port_number,
)
from simulation.cli.inputs import check_paths


def toml_string(value: str) -> str:
    """A TOML string literal for ``--node-config`` (Flower's parser allows no escapes)."""
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    raise ConfigError(f"{value!r}: a node config value cannot hold both quote kinds")


def node_config(values: dict[str, str | float | bool]) -> str:
    """``key=value`` pairs for ``flower-supernode --node-config`` (strings quoted)."""
    def value(v: str | float | bool) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return toml_string(v) if isinstance(v, str) else repr(float(v))

    return " ".join(f"{k}={value(v)}" for k, v in values.items())


def site_node_config(args: argparse.Namespace) -> dict[str, str | float | bool]:
    """The site's node config from the command's options (absolute paths, files checked)."""
    from seqanom_core.formats import list_formats

    if args.format not in list_formats():
        raise ConfigError(f"--format {args.format!r}: use one of {', '.join(list_formats())}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise ConfigError(f"--device {args.device!r}: use auto, cpu, cuda or cuda:N")
    cfg: dict[str, str | float | bool] = {"data-path": existing_file(args.data, "--data"),
                                   "format": args.format}
    ledger = Path(args.ledger).expanduser().resolve()
    if ledger.is_dir():
        raise ConfigError(f"--ledger {args.ledger}: is a directory (give a JSON file path)")
    ledger.parent.mkdir(parents=True, exist_ok=True)
    cfg["ledger-path"] = str(ledger)
    if args.privacy_budget is not None:
        if not is_positive_number(args.privacy_budget):
            raise ConfigError(f"--privacy-budget must be a positive number, not {args.privacy_budget}")
        cfg["privacy-budget"] = float(args.privacy_budget)
    # the site's privacy policy (seqanom_core/federation/site_policy.py): only what is not the
    # strict default is written
    if args.allow_no_dp:
        cfg["require-dp"] = False
    if args.allow_dp_seed:
        cfg["allow-dp-seed"] = True
    if args.new_ledger:
        cfg["new-ledger"] = True
    if args.max_delta is not None:
        if not 0 < args.max_delta < 1:
            raise ConfigError(f"--max-delta must be in (0, 1), not {args.max_delta}")
        cfg["max-delta"] = float(args.max_delta)
    if args.max_rounds is not None:
        if args.max_rounds < 1:
            raise ConfigError(f"--max-rounds must be 1 or more, not {args.max_rounds}")
        cfg["max-rounds"] = float(args.max_rounds)
    cfg["device"] = args.device
    cfg["site-name"] = args.site_name or Path(args.data).stem
    if args.test_path:
        cfg["test-path"] = existing_file(args.test_path, "--test-path")
    if args.labels_path:
        cfg["labels-path"] = existing_file(args.labels_path, "--labels-path")
    return cfg


def cmd_supernode(args: argparse.Namespace) -> int:
    """Start this site's SuperNode: connects to the SuperLink over TLS, authenticates with the
    site's private key, and runs the seqanom ClientApp on the site's own data for every message."""
    if args.threads < 1:
        raise ConfigError(f"--threads must be 1 or more, not {args.threads}")
    if args.max_retries is not None and args.max_retries < 0:
        raise ConfigError(f"--max-retries must be 0 or more, not {args.max_retries}")
    # the site's ledger is updated in place and Flower installs apps under --flwr-home: neither
    # may name or lie inside the site's data, labels, certificate or key
    check_paths({"data": args.data, "test_path": args.test_path, "labels_path": args.labels_path,
                 "root_certificates": args.root_certificates, "private_key": args.private_key},
                {"ledger": args.ledger, "flwr_home": args.flwr_home}, dirs=["flwr_home"])
    exe = flower_executable("flower-supernode")
    argv = [exe, "--superlink", args.superlink, "--port", str(args.port),
            "--node-config", node_config(site_node_config(args))]
    if args.max_retries is not None:
        argv += ["--max-retries", str(args.max_retries)]
    if args.insecure:
        if args.root_certificates or args.private_key:
            raise ConfigError("--insecure cannot be combined with --root-certificates or "
                              "--private-key")
        insecure_warning("flower-supernode --insecure",
                         "the SuperLink is not verified: anyone on the path can read or "
                         "replace the global model this site trains.")
        argv.append("--insecure")
    else:
        if not (args.root_certificates and args.private_key):
            raise ConfigError("a SuperNode needs --root-certificates CA.pem (to verify the "
                              "SuperLink) and --private-key SITE.key (node authentication); "
                              "on a test machine only, --insecure")
        argv += ["--root-certificates",
                 existing_file(args.root_certificates, "--root-certificates", "CERTIFICATE"),
                 "--auth-supernode-private-key",
                 existing_file(args.private_key, "--private-key", "PRIVATE KEY")]
    extra = {"OMP_NUM_THREADS": str(args.threads)}
    if args.flwr_home:
        home = Path(args.flwr_home).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        extra["FLWR_HOME"] = str(home)
    env = flower_env(exe, **extra)
    if args.clientapp_start == "warm" and not args.dry_run:
        env = start_warm_launcher(env)
    return launch(argv, env, args.dry_run)


def start_warm_launcher(env: dict[str, str]) -> dict[str, str]:
    """Start ``client.warm_clientapp``'s launcher beside the SuperNode this process becomes;
    returns the SuperNode's environment with the launcher's ``flwr-clientapp`` first on PATH."""
    import os
    import subprocess
    import sys
    import tempfile

    from client.warm_clientapp import write_shim

    shim_dir = Path(tempfile.mkdtemp(prefix="seqanom-warm-"))  # short: a socket path's limit
    sock = write_shim(shim_dir, flower_executable("flwr-clientapp"))
    subprocess.Popen([sys.executable, "-m", "client.warm_clientapp", "--socket", str(sock),
                      "--watch-pid", str(os.getpid())], env=env)
    return dict(env, PATH=str(shim_dir) + os.pathsep + env["PATH"])


def add_site_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``supernode`` with the seqanom parser's ``add``."""
    p = add("supernode", cmd_supernode, "start this site's SuperNode (TLS, node authentication)")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", type=host_port,
                   help="the SuperLink's address, as in its certificate")
    p.add_argument("--root-certificates", metavar="CA.pem",
                   help="CA certificate that signed the SuperLink's certificate")
    p.add_argument("--private-key", metavar="SITE.key",
                   help="this site's node-authentication private key (OpenSSH ECDSA; its .pub "
                        "must be registered with 'flwr supernode register')")
    p.add_argument("--data", required=True, metavar="PATH", help="the site's training events")
    p.add_argument("--format", default="seqanom", help="format of --data (see 'train --help')")
    p.add_argument("--ledger", required=True, metavar="PATH",
                   help="the site's privacy ledger (JSON; created on first use, then "
                        "cumulative across rounds and runs)")
    p.add_argument("--privacy-budget", type=float, metavar="EPSILON",
                   help="the site's total epsilon budget over its ledger: a run's 'epsilon' "
                        "above it is capped at it (default 8)")
    p.add_argument("--max-delta", type=float, metavar="DELTA",
                   help="decline runs whose delta is set above this (default 1e-5)")
    p.add_argument("--max-rounds", type=int, metavar="N",
                   help="decline runs of more rounds than this (default: no limit)")
    p.add_argument("--allow-no-dp", action="store_true",
                   help="take part in runs without DP (default: declined)")
    p.add_argument("--new-ledger", action="store_true",
                   help="start a new ledger where this site kept one that is now missing (its "
                        "spend is then forgotten: only for a site that knows why)")
    p.add_argument("--allow-dp-seed", action="store_true",
                   help="take part in runs that seed the DP noise (reproducible, and removable "
                        "by whoever knows the seed; default: declined)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--site-name", help="name in the server's logs (default: data file stem)")
    p.add_argument("--test-path", metavar="PATH", help="optional labelled test shoppers")
    p.add_argument("--labels-path", metavar="PATH", help="labels for --test-path")
    p.add_argument("--port", type=port_number, default=9094,
                   help="local port of the SuperNode's Runtime API (loopback; each SuperNode on "
                        "one machine needs its own)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS for the ClientApp processes")
    p.add_argument("--flwr-home", metavar="DIR",
                   help="Flower's directory for this SuperNode (installed apps); give each "
                        "SuperNode on one machine its own")
    p.add_argument("--max-retries", type=int,
                   help="give up after this many failed connection attempts (default: retry)")
    p.add_argument("--clientapp-start", choices=("warm", "cold"), default="warm",
                   help="warm (default): each message's ClientApp process is forked from a "
                        "launcher that imported torch, Opacus and Flower once; cold: Flower "
                        "starts a new Python for each message")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no node authentication (test machines only; loud warning)")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
