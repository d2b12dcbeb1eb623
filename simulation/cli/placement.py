"""Where ``simulate`` runs its sites: ``--ray-address`` (an existing Ray cluster) and
``--gpus-per-site``, checked before anything is written, and the ``flwr run`` equivalent that
``simulate --prepare-only`` prints."""

from __future__ import annotations

import argparse
import math

from seqanom_core.errors import ConfigError
from simulation.cli.flower_launch import host_port
from simulation.federation import Placement, default_gpus_per_site, ray_cluster_problem

#: the options of this module: runtime choices that ``simulate --resume`` accepts
PLACEMENT_OPTIONS = ("ray_address", "gpus_per_site")


def gpu_share(text: str) -> float:
    """argparse type of a site's GPU share: 0, a fraction up to 1, or a whole number of GPUs
    (Ray allots fractions of one GPU, to 4 decimals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a GPU share is 0 or more, not {text!r}")
    if value > 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(f"more than one GPU is a whole number, not {text!r}")
    if 0 < value < 1e-4 or round(value, 4) != value:
        raise argparse.ArgumentTypeError(f"Ray allots GPU shares to 4 decimals, not {text!r}")
    return value + 0.0  # -0.0 is 0


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """``--ray-address`` and ``--gpus-per-site`` of ``simulate``."""
    p.add_argument("--ray-address", type=host_port, metavar="HOST:PORT",
                   help="run the sites on this running Ray cluster (its head's GCS address, "
                        "'ray start --head --port PORT') instead of starting Ray: run simulate "
                        "on a node of it, with the project and --out at the same paths on "
                        "every node; the cluster is left running. Allowed with --resume")
    p.add_argument("--gpus-per-site", type=gpu_share, metavar="G",
                   help="Ray GPUs of each site (0, a fraction, or whole GPUs). Default: 0 "
                        "without CUDA; with CUDA, this machine's GPUs shared evenly by the "
                        "sites (at most 1 each). Allowed with --resume")


def placement_from_args(args: argparse.Namespace) -> Placement:
    """The placement the options give, checked: a Ray cluster must answer at --ray-address
    (within seconds; ``ray.init`` would wait minutes), and without one, GPUs per site need CUDA
    here (unless only prepared for ``flwr run``)."""
    if args.ray_address is not None:
        problem = ray_cluster_problem(args.ray_address)
        if problem is not None:
            raise ConfigError(f"--ray-address {args.ray_address}: no Ray cluster: {problem}")
    elif args.gpus_per_site and not getattr(args, "prepare_only", False):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--gpus-per-site {args.gpus_per_site:g}: this machine has no "
                              "CUDA GPU for the sites (give 0, or --ray-address of a cluster "
                              "with GPUs)")
    return Placement(ray_address=args.ray_address, gpus_per_site=args.gpus_per_site)


def flwr_run_lines(placement: Placement, sites: int, run_config: str) -> list[str]:
    """The commands that run a prepared simulation with ``flwr run`` (README): on the given Ray
    cluster (``RAY_ADDRESS`` in the SuperLink's environment reaches its ``ray.init``) and with
    the sites' resources in the federation config when either is given."""
    federation = f"num-supernodes={sites}"
    if placement.ray_address is not None or placement.gpus_per_site is not None:
        gpus = (default_gpus_per_site(sites) if placement.gpus_per_site is None
                else placement.gpus_per_site)
        federation += (f" client-resources-num-cpus={math.ceil(placement.cpus_per_site)}"
                       f" client-resources-num-gpus={gpus:g}")
    if placement.ray_address is None:
        superlink = ("flower-superlink --insecure --simulation --port 39591"
                     "    # loopback only")
    else:
        superlink = (f"RAY_ADDRESS={placement.ray_address} flower-superlink --insecure "
                     "--simulation --port 39591    # loopback only, on a node of the cluster")
    return [f"  {superlink}",
            f"  flwr run . seqanom-sim --run-config {run_config} "
            f"--federation-config '{federation}' --stream"]
