"""Where ``simulate`` runs its sites (``--ray-address``, ``--gpus-per-site``): the checks made
before anything is written, and the Ray backend config they give. The run on a real two-node
cluster is ``test_ray_cluster.py``."""

from __future__ import annotations

import argparse
import time
from concurrent import futures

import pytest

from simulation.cli import placement as cli_placement
from simulation.cli.main import main
from simulation.cli.placement import flwr_run_lines, gpu_share
from simulation.federation import (
    Placement,
    backend_config,
    default_gpus_per_site,
    ray_cluster_problem,
    run_federation,
)


def _cuda(monkeypatch, gpus: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("-0", 0.0), ("0.25", 0.25),
                                             ("0.3333", 0.3333), ("1", 1.0), ("2", 2.0)])
def test_a_gpu_share_is_zero_a_fraction_or_whole_gpus(text, value):
    assert gpu_share(text) == value


@pytest.mark.parametrize("text", ["", "x", "nan", "inf", "-0.5", "1.5", "0.33333", "1e-5"])
def test_other_gpu_shares_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        gpu_share(text)


def test_sites_get_gpus_only_with_cuda_shared_evenly(monkeypatch):
    _cuda(monkeypatch, 0)
    assert default_gpus_per_site(2) == 0.0
    _cuda(monkeypatch, 1)
    assert [default_gpus_per_site(n) for n in (1, 2, 3)] == [1.0, 0.5, 0.3333]
    _cuda(monkeypatch, 2)
    assert default_gpus_per_site(1) == 1.0 and default_gpus_per_site(4) == 0.5
    assert backend_config(Placement(), 4)["client_resources"] == {"num_cpus": 1.0,
                                                                 "num_gpus": 0.5}
    assert backend_config(Placement(gpus_per_site=0.0), 4)["client_resources"]["num_gpus"] == 0


def test_an_existing_cluster_is_joined_by_address_without_a_cpu_count():
    here = backend_config(Placement(gpus_per_site=0.0), 2)["init_args"]
    assert here["num_cpus"] >= 1 and "address" not in here
    there = backend_config(Placement(ray_address="10.0.0.5:6379", gpus_per_site=0.25), 2)
    assert there["init_args"] == {"include_dashboard": False, "address": "10.0.0.5:6379"}
    assert there["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.25}


def test_no_ray_cluster_is_found_in_seconds_where_none_answers():
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # gRPC, but not Ray
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        t0 = time.monotonic()
        assert "not a Ray GCS" in ray_cluster_problem(f"127.0.0.1:{port}")
        server.stop(0)
        assert "nothing answers" in ray_cluster_problem(f"127.0.0.1:{port}")
        assert time.monotonic() - t0 < 5
    finally:
        server.stop(0)


def test_run_federation_refuses_an_address_without_a_cluster_before_writing(tmp_path):
    from seqanom_core.errors import ConfigError

    with pytest.raises(ConfigError, match="no Ray cluster at 127.0.0.1:1"):
        run_federation(tmp_path / "run", {}, 2, placement=Placement(ray_address="127.0.0.1:1"))
    assert not (tmp_path / "run").exists()


def _simulate(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["-q", "simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_refuses_an_address_without_a_cluster_in_one_line(tmp_path, capsys):
    out = tmp_path / "sim"
    code, _, err = _simulate(["--shoppers", "24", "--sites", "2", "--out", str(out),
                              "--ray-address", "127.0.0.1:1"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "--ray-address 127.0.0.1:1: no Ray cluster" in err
    assert not out.exists()  # refused before anything is written
    out.mkdir()
    code, _, err = _simulate(["--out", str(out), "--resume", "--ray-address", "127.0.0.1:1"],
                             capsys)  # allowed with --resume, and checked there too
    assert code == 2 and "--ray-address 127.0.0.1:1: no Ray cluster" in err


def test_simulate_refuses_gpus_without_cuda_unless_only_prepared(tmp_path, capsys, monkeypatch):
    _cuda(monkeypatch, 0)
    base = ["--shoppers", "24", "--sites", "2", "--out", str(tmp_path / "sim")]
    code, _, err = _simulate([*base, "--gpus-per-site", "0.5"], capsys)
    assert code == 2 and "--gpus-per-site 0.5: this machine has no CUDA GPU" in err
    code, out, _ = _simulate([*base, "--gpus-per-site", "0.5", "--prepare-only"], capsys)
    assert code == 0 and "client-resources-num-gpus=0.5" in out


def test_prepare_only_prints_the_flwr_run_on_the_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_placement, "ray_cluster_problem", lambda address: None)
    _cuda(monkeypatch, 0)
    code, out, _ = _simulate(["--prepare-only", "--shoppers", "24", "--sites", "2", "--out",
                              str(tmp_path / "sim"), "--ray-address", "10.0.0.5:6379"], capsys)
    assert code == 0
    assert "RAY_ADDRESS=10.0.0.5:6379 flower-superlink --insecure --simulation" in out
    assert ("--federation-config 'num-supernodes=2 client-resources-num-cpus=1 "
            "client-resources-num-gpus=0'") in out


def test_without_placement_options_the_flwr_run_lines_are_unchanged():
    lines = flwr_run_lines(Placement(), 4, "runs/flwr/run-config.toml")
    assert lines[0].strip().startswith("flower-superlink --insecure --simulation --port 39591")
    assert "--federation-config 'num-supernodes=4' --stream" in lines[1]
