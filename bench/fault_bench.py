"""Fault tolerance: AUROC of the final global model when sites drop out or turn Byzantine.

    python -m bench.fault_bench [--sites 10] [--shoppers N] [--rounds R] [--local-epochs E]
        [--strategies fedavg fedmedian fedtrimmedavg krum] [--faults clean dropout30 nan ...]
        [--dp] [--seed S] [--timeout SECONDS] [--tmp-dir DIR] [--out JSON]

The built-in generator makes the shoppers of ``--sites`` sites once (``simulation.run.prepare_sites``,
as ``seqanom simulate``: 30% of each site's shoppers held out as labelled test shoppers, with
injected anomalies). Then for every strategy x fault, each in its own subprocess, the federation
runs on Flower's simulation engine (``simulation.federation.run_federation``) with the ServerApp
of ``seqanom simulate`` and the benchmark's ClientApp ``bench.faulty_sites:app``, which wraps the
product's handlers and injects the fault (``bench/faulty_sites.py``): ``dropout30`` (a fresh 30%
of the sites fails each round), or a fixed 20% of Byzantine sites sending NaN, 100x their update,
its sign flipped, or a Gaussian update of its norm. The final global model is scored on the pooled
test shoppers of all sites (``simulation.baselines.evaluate_scores``: AUROC, AUPRC).

Krum is told the number of Byzantine sites (``krum-byzantine``, 20% of the sites) in every one of
its runs; FedTrimmedAvg cuts ``trim-beta`` 0.2 at each end. A run that fails, or leaves a model
whose scores are not finite, is a row with ``failed`` (the reason), not a crash of the bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import emit, envelope, setup_logging

log = logging.getLogger("bench.fault")

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT_APP = "bench.faulty_sites:app"
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
#: Every fault of ``bench.faulty_sites`` (kept here too so ``--help`` needs no Flower import).
FAULTS = ("clean", "dropout30", "nan", "scale100", "signflip", "random")
DEFAULTS = {"sites": 10, "shoppers": 1500, "rounds": 5, "local_epochs": 1}
#: The model of every run: smaller than ``seqanom simulate``'s, so the matrix fits in ~30 min.
MODEL = {"d_model": 16, "n_layers": 1, "max_len": 32}
RUN_FILE, RESULT_FILE = "bench-run.json", "bench-result.json"


def sim_config(out: Path, sites: int, shoppers: int, rounds: int, local_epochs: int, dp: bool,
               seed: int = 0):
    """The ``SimulationConfig`` of the benchmark's data and runs (no baselines)."""
    from simulation.run import SimulationConfig

    return SimulationConfig(out=out, shoppers=shoppers, sites=sites, rounds=rounds,
                            local_epochs=local_epochs, dp=dp, baselines=False, seed=seed, **MODEL)


def prepare(cfg) -> dict[str, Any]:
    """Generate the shoppers and write the site files and pooled labels under ``cfg.out``."""
    from simulation.run import prepare_sites
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=cfg.shoppers, n_sites=cfg.sites,
                                           seed=cfg.seed))
    trains, tests, labels, _ = prepare_sites(cfg, events)
    return {"train_shoppers": sum(len(t.column("user_id").unique()) for t in trains),
            "test_shoppers": int(len(labels)), "test_anomalous": int(labels["is_anomalous"].sum())}


def run_config_for(cfg, run_dir: Path, strategy: str) -> dict[str, Any]:
    """The run config of one run in ``run_dir``, reading the shared site files of ``cfg.out``."""
    from simulation.run import run_config

    rc = run_config(dataclasses.replace(cfg, out=run_dir, strategy=strategy))
    rc["data-dir"] = str((cfg.out / "sites").resolve())
    if strategy == "krum":
        rc["krum-byzantine"] = round(0.2 * cfg.sites)
    return rc


# --------------------------------------------------------------------------- one run (worker)


def round_replies(rounds: list[dict]) -> list[dict[str, int]]:
    """Per round, from ``metrics.jsonl``: training replies received, rejected (errors and unusable
    updates) and passed to the strategy's aggregation."""
    out = []
    for r in rounds:
        trained = [s for s in r["sites"].values() if "declined" in s]  # training replies only
        used = [s for s in trained if not s["declined"] and "rejected" not in s]
        out.append({"round": int(r["round"]), "replied": len(trained),
                    "rejected": len(r["rejected"]), "aggregated": len(used)})
    return out


def score_final_model(run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """AUROC and AUPRC of ``RUN_DIR/model`` on the pooled labelled test shoppers of all sites."""
    import pandas as pd
    import pyarrow as pa

    from seqanom_core.detector import SequenceDetector
    from seqanom_core.ingest import read_events
    from simulation.baselines import evaluate_scores

    sites = sorted(data_dir.glob("site-*"), key=lambda p: int(p.name.split("-")[1]))
    test = pa.concat_tables([read_events(p / "test.parquet", "seqanom")[0] for p in sites],
                            promote_options="default")
    labels = pd.read_csv(data_dir.parent / "test_labels.csv", dtype={"user_id": str})
    scored = SequenceDetector.load(run_dir / "model", progress=False).score_shoppers(test)
    ev = evaluate_scores(scored.ids.astype(str), scored.scores, labels)
    return {"auroc": ev["auroc"], "auprc": ev["auprc"], "test_shoppers": ev["n"]}


def worker(run_dir: Path) -> dict[str, Any]:
    """Run the federation described in ``RUN_DIR/bench-run.json`` and score its final model."""
    from seqanom_core.errors import ConfigError
    from simulation.federation import run_federation

    spec = json.loads((run_dir / RUN_FILE).read_text())
    seconds = run_federation(run_dir, spec["run_config"], spec["sites"],
                             client_app_attr=CLIENT_APP)
    lines = (run_dir / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(line) for line in lines if line]
    res: dict[str, Any] = {"federation_s": round(seconds, 1), "rounds_completed": len(rounds),
                           "replies": round_replies(rounds)}
    try:
        res.update(score_final_model(run_dir, Path(spec["run_config"]["data-dir"])))
    except ConfigError as err:  # e.g. a model whose scores are NaN or infinite
        res["failed"] = f"scoring the final model: {err}"
    return res


# --------------------------------------------------------------------------- orchestration

_ERROR_LINE = re.compile(r"^\w*(?:Error|Exception)\b.*")


def failure_reason(log_text: str, rc: int) -> str:
    """The last error line of a failed run's log (a traceback's final line), else the exit code."""
    errors = [m.group(0) for line in log_text.splitlines()
              if (m := _ERROR_LINE.match(line.strip()))]
    return errors[-1][:400] if errors else f"exit code {rc}"


def run_one(cfg, work: Path, strategy: str, fault: str, timeout: float) -> dict[str, Any]:
    """One strategy x fault run in its own subprocess; a row of the result."""
    from bench.faulty_sites import FaultPlan

    run_dir = work / f"{strategy}-{fault}"
    run_dir.mkdir(parents=True)
    plan = FaultPlan(fault, cfg.sites, seed=cfg.seed)
    plan.write(run_dir)
    (run_dir / RUN_FILE).write_text(json.dumps(
        {"run_config": run_config_for(cfg, run_dir, strategy), "sites": cfg.sites}))
    row: dict[str, Any] = {"strategy": strategy, "fault": fault}
    if plan.n_byzantine:
        row["byzantine_sites"] = plan.byzantine_sites()
    if plan.n_dropped:
        row["dropped_sites"] = {r: plan.dropped_sites(r) for r in range(1, cfg.rounds + 1)}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning")  # Opacus says the same every step
    cmd = [sys.executable, "-m", "bench.fault_bench", "--worker", str(run_dir)]
    t0 = time.perf_counter()
    with open(run_dir / "run.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:  # the worker's own process group: Ray's processes are started inside it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    result = run_dir / RESULT_FILE
    if rc is None:
        row["failed"] = f"timed out after {timeout:.0f} s"
    elif rc != 0 or not result.is_file():
        row["failed"] = failure_reason((run_dir / "run.log").read_text(errors="replace"), rc)
    else:
        row.update(json.loads(result.read_text()))
    return row


def run(sites: int, shoppers: int, rounds: int, local_epochs: int, strategies: list[str],
        faults: list[str], dp: bool = False, seed: int = 0, timeout: float = 600.0,
        tmp_dir: str | None = None) -> dict[str, Any]:
    """Prepare the data once, then run every strategy x fault; the rows and the data summary."""
    out: dict[str, Any] = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="seqanom-fault-bench-", dir=tmp_dir) as d:
        work = Path(d)
        cfg = sim_config(work / "data", sites, shoppers, rounds, local_epochs, dp, seed)
        out["data"] = prepare(cfg)
        for strategy in strategies:
            for fault in faults:
                log.info("%s, %s ...", strategy, fault)
                row = run_one(cfg, work, strategy, fault, timeout)
                log.info("%s, %s: %s (%.0f s)", strategy, fault,
                         row.get("failed") or f"AUROC {row['auroc']:.3f}", row["seconds"])
                out["rows"].append(row)
    return out


def summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """AUROC per strategy and fault (the failure reason where a run failed)."""
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        value = r.get("auroc") if "failed" not in r else f"failed: {r['failed']}"
        table.setdefault(r["strategy"], {})[r["fault"]] = value
    return table


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.fault_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=DEFAULTS["sites"])
    ap.add_argument("--shoppers", type=int, default=DEFAULTS["shoppers"],
                    help="synthetic shoppers in all")
    ap.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    ap.add_argument("--local-epochs", type=int, default=DEFAULTS["local_epochs"])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                    choices=("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"))
    ap.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    ap.add_argument("--dp", action=argparse.BooleanOptionalAction, default=False,
                    help="DP-SGD at every site (epsilon 8; default off)")
    ap.add_argument("--seed", type=int, default=0, help="data, training and which sites fail")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--tmp-dir", default=None, help="where to write the site files and runs")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_logging()
    if args.worker:
        os.dup2(2, 1)  # this process and everything it starts write to the run's log only
        run_dir = Path(args.worker)
        (run_dir / RESULT_FILE).write_text(json.dumps(worker(run_dir)))
        return
    params = {k: getattr(args, k) for k in ("sites", "shoppers", "rounds", "local_epochs",
                                            "strategies", "faults", "dp", "seed", "timeout")}
    params.update(model=MODEL, dropout_fraction=0.3, byzantine_fraction=0.2,
                  krum_byzantine=round(0.2 * args.sites), trim_beta=0.2,
                  client_app=CLIENT_APP)
    t0 = time.perf_counter()
    results = run(args.sites, args.shoppers, args.rounds, args.local_epochs, args.strategies,
                  args.faults, args.dp, args.seed, args.timeout, args.tmp_dir)
    from simulation.report import plain_json

    emit(envelope("fault", params, plain_json(results), round(time.perf_counter() - t0, 1),
                  summary=plain_json(summary(results["rows"]))), args.out)


if __name__ == "__main__":
    main()
