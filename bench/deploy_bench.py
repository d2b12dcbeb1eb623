"""Seconds per round of the same run deployed on loopback and simulated.

    python -m bench.deploy_bench [--sites 3] [--shoppers 450] [--rounds 3] [--local-epochs 1]
        [--dp | --no-dp] [--tmp-dir DIR] [--out JSON]

``simulation.run.prepare_flwr_run`` writes the sites' files and the run config, exactly as
``seqanom simulate`` does. Then the same run config goes through:

* **simulated**: ``simulation.federation.run_federation`` (Flower's simulation engine on Ray,
  what ``simulate`` runs), in a subprocess;
* **deployed**: what the README's deployment steps start, on 127.0.0.1: ``seqanom credentials``,
  ``seqanom superlink`` (TLS, node authentication), ``seqanom connection``, ``flwr supernode
  register``, one ``seqanom supernode`` per site on that site's files, then ``flwr run``.

Per round, the server's own ``seconds`` (``checkpoint-dir/metrics.jsonl``) for each; ``ratio`` =
deployed / simulated, per round and for the mean. Where a deployed round's time goes: per message
kind, the mean seconds from a SuperNode receiving a message to its reply being sent (a fresh
ClientApp process each), from the SuperNodes' logs. Every process started is stopped by its pid
(process group) at the end, also on failure; survivors are reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import emit, envelope, setup_logging

log = logging.getLogger("bench.deploy")

REPO_ROOT = Path(__file__).resolve().parents[1]
FLWR = str(Path(sys.executable).parent / "flwr")
_MSG = re.compile(r"^\s*([\d.]+) .*(Receiving|Sending): (\S+) message")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seqanom(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulation.cli", *args]


class Started:
    """Processes in their own sessions, output time-stamped to ``logs/<name>.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs, self.t0 = logs, {}, time.monotonic()
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log_file = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT, start_new_session=True, text=True,
                                errors="replace")
        self.procs[name] = proc

        def copy() -> None:
            for line in proc.stdout:
                log_file.write(f"{time.monotonic() - self.t0:.3f} {line}")
                log_file.flush()
            log_file.close()

        threading.Thread(target=copy, daemon=True).start()
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, name: str, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while text not in self.log(name):
            if self.procs[name].poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{name}: no '{text}' (exit {self.procs[name].poll()}):\n"
                                   f"{self.log(name)[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> list[int]:
        """SIGTERM each process group, SIGKILL what is left after 15 s; pids still alive."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # the rest of each group (Flower's SuperExec, seqanom's ClientApp launcher) follows
        end = time.monotonic() + 15
        while any(_group_alive(p.pid) for p in self.procs.values()) and time.monotonic() < end:
            time.sleep(0.5)
        for proc in self.procs.values():
            if _group_alive(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
        time.sleep(1)
        return [p.pid for p in self.procs.values() if _group_alive(p.pid)]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _run(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}...: exit {res.returncode}: {res.stderr[-2000:]}")
    return res.stdout


def _round_seconds(ckpt: Path) -> list[float]:
    lines = (ckpt / "metrics.jsonl").read_text().splitlines()
    return [round(float(json.loads(line)["seconds"]), 2) for line in lines if line.strip()]


def message_times(log: str) -> list[tuple[str, float, float]]:
    """(message kind, received at, reply sent at) for each message a SuperNode log shows."""
    out, pending = [], {}
    for line in log.splitlines():
        m = _MSG.match(line)
        if m and m.group(2) == "Receiving":
            pending[m.group(3)] = float(m.group(1))
        elif m and m.group(3) in pending:
            out.append((m.group(3), pending.pop(m.group(3)), float(m.group(1))))
    return out


def message_seconds(logs: list[str]) -> dict[str, float]:
    """Mean seconds from receiving a message to sending its reply, per message kind."""
    took: dict[str, list[float]] = {}
    for kind, received, sent in (m for text in logs for m in message_times(text)):
        took.setdefault(kind, []).append(sent - received)
    return {k: round(sum(v) / len(v), 2) for k, v in sorted(took.items())}


def simulated(run_dir: Path, run_config: dict, sites: int) -> dict:
    """``run_federation`` in a subprocess; the server's round seconds."""
    code = ("import json, sys; from pathlib import Path; "
            "from simulation.federation import run_federation; "
            "print(json.dumps(run_federation(Path(sys.argv[1]), json.loads(sys.argv[2]), "
            "int(sys.argv[3]))))")
    t0 = time.monotonic()
    out = _run([sys.executable, "-c", code, str(run_dir), json.dumps(run_config), str(sites)],
               dict(os.environ, PYTHONPATH=str(REPO_ROOT)), timeout=3600)
    return {"rounds_s": _round_seconds(Path(run_config["checkpoint-dir"])),
            "federation_s": round(float(out.strip().splitlines()[-1]), 1),
            "wall_s": round(time.monotonic() - t0, 1)}


def deployed(tmp: Path, run_dir: Path, run_config: dict, sites: int, start: str) -> dict:
    """The README's deployment on loopback with the same sites and run config; ``start``: the
    SuperNodes' ``--clientapp-start`` (warm or cold)."""
    tmp.mkdir(parents=True)
    from simulation.federation import toml_lines

    base = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    cli_env = dict(base, FLWR_HOME=str(tmp / "flwr-cli"))
    names = [f"site-{k}" for k in range(sites)]
    creds, port, started = tmp / "creds", _free_port(), Started(tmp / "logs")
    ckpt = tmp / "deployed-checkpoints"
    config = dict(run_config, **{"checkpoint-dir": str(ckpt),
                                 "final-model-dir": str(ckpt / "final"),
                                 "ledger-dir": str(tmp / "deployed-ledgers")})
    (tmp / "run-config.toml").write_text("\n".join(toml_lines(config)) + "\n")
    t0 = time.monotonic()
    try:
        _run(_seqanom("credentials", "--out", str(creds), "--sites", *names), base)
        started.start("superlink", _seqanom("superlink", "--credentials", str(creds), "--port",
                                            str(port), "--database", str(tmp / "link.db")),
                      dict(base, FLWR_HOME=str(tmp / "flwr-link")))
        _run(_seqanom("connection", "--name", "bench", "--address", f"127.0.0.1:{port}",
                      "--root-certificates", str(creds / "ca.pem"), "--default"), cli_env)
        started.wait_for("superlink", "Uvicorn running on https://", 120)
        for s in names:
            _run([FLWR, "supernode", "register", str(creds / "sites" / s / f"{s}.pub"), "bench",
                  "--name", s, "--format", "json"], cli_env)
        for s in names:
            d = run_dir / "sites" / s
            started.start(s, _seqanom(
                "supernode", "--superlink", f"127.0.0.1:{port}",
                "--root-certificates", str(creds / "ca.pem"),
                "--private-key", str(creds / "sites" / s / f"{s}.key"), "--site-name", s,
                "--data", str(d / "train.parquet"), "--test-path", str(d / "test.parquet"),
                "--labels-path", str(d / "labels.csv"),
                "--ledger", str(tmp / "deployed-ledgers" / f"{s}.json"),
                "--privacy-budget", str(run_config.get("epsilon", 8.0)), "--device", "cpu",
                "--port", str(_free_port()), "--flwr-home", str(tmp / f"flwr-{s}"),
                "--clientapp-start", start), base)
        for s in names:
            started.wait_for(s, "SuperNode ID:", 180)
        ready = time.monotonic() - t0
        t1 = time.monotonic()
        answer = json.loads(_run([FLWR, "run", str(REPO_ROOT), "bench", "--run-config",
                                  str(tmp / "run-config.toml"), "--format", "json"], cli_env))
        run_id, status = str(answer["run-id"]), ""
        while not status.startswith("finished"):
            time.sleep(2 if (ckpt / "final").is_dir() else 10)
            if time.monotonic() - t1 > 3600:
                raise RuntimeError("the deployed run did not finish within an hour")
            runs = json.loads(_run([FLWR, "ls", "bench", "--run-id", run_id, "--format", "json"],
                                   cli_env))["runs"]
            status = runs[0]["status"]
        if status != "finished:completed":
            raise RuntimeError(f"deployed run ended {status}")
        return {"rounds_s": _round_seconds(ckpt), "run_s": round(time.monotonic() - t1, 1),
                "start_up_s": round(ready, 1),
                "message_s": message_seconds([started.log(s) for s in names])}
    finally:
        left = started.stop()
        if left:
            log.warning("process groups still alive after stopping: %s", left)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.deploy_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--shoppers", type=int, default=450)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--starts", nargs="+", choices=("warm", "cold"), default=["warm", "cold"],
                    help="deployed runs, one per SuperNode --clientapp-start, in this order")
    ap.add_argument("--tmp-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    setup_logging()
    from simulation.run import SimulationConfig, prepare_flwr_run, run_config

    params = {"sites": args.sites, "shoppers": args.shoppers, "rounds": args.rounds,
              "local_epochs": args.local_epochs, "dp": args.dp, "starts": args.starts}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="deploy-bench-") as d:
        tmp = Path(d)
        cfg = SimulationConfig(out=tmp / "run", shoppers=args.shoppers, sites=args.sites,
                               partition="iid", rounds=args.rounds,
                               local_epochs=args.local_epochs, dp=args.dp, baselines=False)
        prepare_flwr_run(cfg)
        config = run_config(cfg)
        log.info("simulated run: %d sites, %d rounds", args.sites, args.rounds)
        sim = simulated(cfg.out, config, args.sites)
        log.info("simulated rounds %s", sim["rounds_s"])
        results: dict = {"simulated": sim}
        for start in args.starts:
            dep = deployed(tmp / f"deployed-{start}", cfg.out, config, args.sites, start)
            log.info("deployed (%s ClientApp start) rounds %s", start, dep["rounds_s"])
            results[f"deployed_{start}"] = dep
    sim_mean = sum(sim["rounds_s"]) / len(sim["rounds_s"])
    for start in args.starts:
        dep = results[f"deployed_{start}"]
        dep["ratio_per_round"] = [round(a / b, 2) for a, b in
                                  zip(dep["rounds_s"], sim["rounds_s"], strict=False)]
        dep["ratio"] = round(sum(dep["rounds_s"]) / len(dep["rounds_s"]) / sim_mean, 2)
    results["target_ratio"] = 1.5
    emit(envelope("deploy_bench", params, results, round(time.monotonic() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
