"""A real deployment on loopback: SuperLink with TLS and node authentication, three SuperNodes.

Everything goes through the commands the README gives: ``seqanom credentials``, ``seqanom
superlink``, ``seqanom connection``, ``flwr supernode register``, ``seqanom supernode`` (three
registered sites, each with its own data and ledger; one site whose key is not registered; one
plaintext SuperNode), ``flwr run .`` for two rounds (its outcome read from ``flwr ls``, since
``flwr run`` exits 0 even when the run fails), then ``seqanom score`` with the round-2
checkpoint and ``seqanom ledger``. Every process runs in its own session and is stopped by
process group at teardown, together with any process group its children started.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from deployment import FLWR, REPO, Processes, flwr, run_ok, seqanom
from process_tree import free_port

from bench.deploy_bench import message_times
from seqanom_core.detector import SequenceDetector
from simulation import cli

pytestmark = pytest.mark.integration

SITES = ("site-a", "site-b", "site-c")
RUN_CONFIG = ("num-rounds=2 strategy=\"fedavg\" min-sites=3 round-timeout=300.0 d-model=16 "
              "n-layers=1 n-heads=2 max-len=32 batch-size=16 local-epochs=1 dp=true epsilon=8.0")
BUDGET = 6.0  # each site's --privacy-budget (caps the run's epsilon)


@dataclass
class Federation:
    """A running loopback federation and where its files are."""

    tmp: Path
    procs: Processes
    cli_env: dict[str, str]
    creds: Path
    sites: dict[str, Path]  # site name -> its data directory
    timings: dict[str, float]
    rejected: dict[str, subprocess.Popen]

    def ledger(self, site: str) -> Path:
        return self.tmp / "ledgers" / f"{site}.json"


@pytest.fixture(scope="module")
def federation(tmp_path_factory, site_dirs):
    tmp = tmp_path_factory.mktemp("loopback")
    logs = tmp / "logs"
    logs.mkdir()
    procs = Processes(logs)
    base = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    cli_env = dict(base, FLWR_HOME=str(tmp / "flwr-cli"))
    creds = tmp / "creds"
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        run_ok(seqanom("credentials", "--out", str(creds), "--sites", *SITES, "rogue"), base)
        port = free_port()
        procs.start("superlink", seqanom("superlink", "--credentials", str(creds),
                                         "--port", str(port), "--database", str(tmp / "link.db")),
                    dict(base, FLWR_HOME=str(tmp / "flwr-superlink")))
        run_ok(seqanom("connection", "--name", "loop", "--address", f"127.0.0.1:{port}",
                       "--root-certificates", str(creds / "ca.pem"), "--default"), cli_env)
        procs.wait_for("superlink", "Uvicorn running on https://", 120)
        timings["superlink-ready"] = time.monotonic() - t0
        # register the three sites' public keys (not the rogue's), concurrently
        reg = [subprocess.Popen([FLWR, "supernode", "register", str(creds / "sites" / s /
                                 f"{s}.pub"), "loop", "--name", s, "--format", "json"],
                                env=cli_env, cwd=REPO, stdout=subprocess.PIPE, text=True)
               for s in SITES]
        for s, r in zip(SITES, reg, strict=True):
            out, _ = r.communicate(timeout=120)
            assert json.loads(out)["success"], f"registering {s}: {out}"
        timings["sites-registered"] = time.monotonic() - t0
        sites = {s: site_dirs / f"site-{k}" for k, s in enumerate(SITES)}

        def supernode(name: str, data: Path, *security: str) -> subprocess.Popen:
            return procs.start(name, seqanom(
                "supernode", "--superlink", f"127.0.0.1:{port}", *security,
                "--data", str(data / "train.parquet"), "--ledger", str(tmp / "ledgers" / f"{name}.json"),
                "--privacy-budget", str(BUDGET), "--device", "cpu", "--site-name", name,
                "--test-path", str(data / "test.parquet"), "--labels-path", str(data / "labels.csv"),
                "--port", str(free_port()), "--flwr-home", str(tmp / f"flwr-{name}")), base)

        for s in SITES:
            supernode(s, sites[s], "--root-certificates", str(creds / "ca.pem"),
                      "--private-key", str(creds / "sites" / s / f"{s}.key"))
        rejected = {
            "rogue": supernode("rogue", sites["site-a"], "--root-certificates",
                               str(creds / "ca.pem"), "--private-key",
                               str(creds / "sites" / "rogue" / "rogue.key"), "--max-retries", "0"),
            "plaintext": supernode("plaintext", sites["site-a"], "--insecure", "--max-retries", "0"),
        }
        for s in SITES:
            procs.wait_for(s, "SuperNode ID:", 180)
        timings["supernodes-online"] = time.monotonic() - t0
        yield Federation(tmp, procs, cli_env, creds, sites, timings, rejected)
    finally:
        procs.stop()


def test_unregistered_site_is_rejected(federation):
    proc = federation.rejected["rogue"]
    proc.wait(timeout=180)
    log = federation.procs.log("rogue")
    assert proc.returncode != 0, log[-2000:]
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert "SuperNode ID:" not in log
    nodes = flwr(federation.cli_env, "supernode", "ls", "loop")["nodes"]
    assert len(nodes) == 3 and all(n["status"] == "online" for n in nodes), nodes


def test_plaintext_supernode_is_refused(federation):
    proc = federation.rejected["plaintext"]
    proc.wait(timeout=180)
    log = federation.procs.log("plaintext")
    assert "WARNING: INSECURE MODE" in log  # the wrapper's loud warning came first
    assert proc.returncode != 0, log[-2000:]
    assert "could not establish a connection" in log and "SuperNode ID:" not in log, log[-2000:]


@pytest.fixture(scope="module")
def trained(federation):
    """``flwr run .`` for two rounds; returns (run id, checkpoint dir) once it finished."""
    ckpt = federation.tmp / "checkpoints"
    t0 = time.monotonic()
    overrides = f'{RUN_CONFIG} checkpoint-dir="{ckpt}" final-model-dir="{ckpt / "final"}"'
    started = flwr(federation.cli_env, "run", ".", "loop", "--run-config", overrides)
    assert started["success"], started
    run_id = int(started["run-id"])
    status, last_ls, run = "", 0.0, {}
    while not status.startswith("finished"):
        if time.monotonic() - t0 > 900:
            pytest.fail(f"run {run_id} not finished after 900 s\n{federation.procs.tails()}")
        time.sleep(1)
        # `flwr ls` costs a Python start: ask when the final model appears, else every 20 s
        if (ckpt / "final").is_dir() or time.monotonic() - last_ls > 20:
            last_ls = time.monotonic()
            runs = flwr(federation.cli_env, "ls", "loop", "--run-id", str(run_id))["runs"]
            run = runs[0]
            status = run["status"]
    federation.timings["run-wall"] = time.monotonic() - t0
    assert status == "finished:completed", f"{run}\n{federation.procs.tails()}"
    rounds = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    federation.timings.update({f"round-{r['round']}": r["seconds"] for r in rounds})
    # where the time goes: each message is one ClientApp process (start + work) at each site
    msgs = [m for s in SITES for m in message_times(federation.procs.log(s))]
    for kind in sorted({k for k, _, _ in msgs}):
        took = [b - a for k, a, b in msgs if k == kind]
        federation.timings[f"clientapp-{kind}-mean"] = sum(took) / len(took)
    federation.timings["messages"] = len(msgs)
    if msgs:
        federation.timings["submit-to-first-message"] = min(a for _, a, _ in msgs) - (
            t0 - federation.procs.t0)
    print("\nloopback timings (s):", json.dumps({k: round(v, 1) for k, v in
                                                 federation.timings.items()}))
    return run_id, ckpt


def test_two_rounds_over_tls_with_node_authentication(federation, trained):
    run_id, ckpt = trained
    assert sorted(p.name for p in ckpt.glob("round-*")) == ["round-0001", "round-0002"]
    for r in (1, 2):
        rec = json.loads((ckpt / f"round-{r:04d}" / "round.json").read_text())
        assert sorted(rec["sites"]) == list(SITES) and not rec["rejected"], rec
        assert all(not s["declined"] and s["epsilon"] <= BUDGET for s in rec["sites"].values())
    meta = json.loads((ckpt / "round-0002" / "metadata.json").read_text())
    assert meta["run_id"] == str(run_id) and meta["round"] == 2
    for s in SITES:  # what the server was told equals each site's own ledger
        ledger = json.loads(federation.ledger(s).read_text())
        assert meta["privacy"]["epsilon_per_site"][s] == pytest.approx(ledger["epsilon_spent"])


def test_site_scores_its_shoppers_with_the_checkpoint_and_reads_its_ledger(
        federation, trained, capsys, tmp_path):
    run_id, ckpt = trained
    data = federation.sites["site-b"]
    out = tmp_path / "scores.csv"
    assert cli.main(["-q", "score", "--model", str(ckpt / "round-0002"), "--data",
                     str(data / "test.parquet"), "--labels", str(data / "labels.csv"),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "scored" in printed, printed
    shoppers = len((data / "labels.csv").read_text().splitlines()) - 1
    assert len(out.read_text().splitlines()) == shoppers + 1  # one row per test shopper
    assert SequenceDetector.load(ckpt / "round-0002", progress=False).metadata_["round"] == 2

    assert cli.main(["ledger", str(federation.ledger("site-b")), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["site"] == "site-b" and summary["budget"] == BUDGET
    assert 0 < summary["epsilon_spent"] <= BUDGET and summary["delta"] > 0
    assert summary["remaining"] == pytest.approx(BUDGET - summary["epsilon_spent"])
    [run] = summary["runs"]
    assert run["run"] == str(run_id) and run["rounds"] == [1, 2]
    assert run["epsilon_added"] == pytest.approx(summary["epsilon_spent"])
    assert cli.main(["ledger", str(federation.ledger("site-b"))]) == 0
    assert f"remaining {summary['remaining']:.3f}" in capsys.readouterr().out


def test_a_run_without_dp_is_declined_by_every_deployed_site(federation, trained):
    """The sites were started with the strict default policy: a run config that turns DP off
    is declined by each of them before it releases anything, and the run fails naming why."""
    ledgers = {s: federation.ledger(s).read_text() for s in SITES}
    ckpt = federation.tmp / "checkpoints-no-dp"
    overrides = (f'{RUN_CONFIG.replace("dp=true", "dp=false").replace("num-rounds=2", "num-rounds=1")} '
                 f'checkpoint-dir="{ckpt}" final-model-dir="{ckpt / "final"}"')
    started = flwr(federation.cli_env, "run", ".", "loop", "--run-config", overrides)
    assert started["success"], started
    run_id, t0, status = int(started["run-id"]), time.monotonic(), ""
    while not status.startswith("finished"):
        if time.monotonic() - t0 > 600:
            pytest.fail(f"run {run_id} not finished after 600 s\n{federation.procs.tails()}")
        time.sleep(3)
        status = flwr(federation.cli_env, "ls", "loop", "--run-id", str(run_id))["runs"][0]["status"]
    assert status != "finished:completed"
    assert not (ckpt / "final").exists()
    logs = "".join(federation.procs.log(s) for s in SITES)
    assert logs.count("declines the run: the site requires DP") >= len(SITES), \
        federation.procs.tails()
    assert {s: federation.ledger(s).read_text() for s in SITES} == ledgers  # nothing spent
