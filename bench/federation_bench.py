"""Wall time and peak memory of a federated run against centralised training of the same model.

    python -m bench.federation_bench [--sites 10 50] [--shoppers N] [--rounds R]
        [--local-epochs E] [--dp | --no-dp] [--quick] [--tmp-dir DIR] [--out JSON]

For each site count K: the built-in generator makes N shoppers spread over K sites (seeded), and
``simulation.run.prepare_sites`` partitions them, splits test shoppers off and writes each site's
files, exactly as ``seqanom simulate`` does. Then, each in its own subprocess:

* **centralised**: the detector of ``simulation.run.centralised_configs`` (the federation's model,
  rounds x local epochs, the same DP setting) is fitted on the pooled training shoppers of all
  sites (read from the same site files);
* **federated**: ``simulation.federation.run_federation`` with ``simulation.run.run_config`` --
  Flower's simulation engine on Ray, the ServerApp and ClientApps of ``seqanom simulate``.

Reported per K: wall seconds of each, ``ratio`` = federated / centralised, where the federated
time goes (Ray start-up, per round training / evaluation, from Flower's log), and peak memory:
for the federation the peak of the RSS summed over the whole process tree (driver, Ray's
GCS/raylet, every actor; PSS too), plus the driver's own peak; for centralised training its
process's peak. No process of the federation may outlive it: survivors are reported and ended.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import emit, envelope, peak_rss_mb, setup_logging
from bench.memory import TreeMemorySampler, still_running

log = logging.getLogger("bench.federation")

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKERS = ("centralised", "federated")
#: Full run: enough shoppers that each of 50 sites trains on more than one batch (q < 1).
DEFAULTS = {"sites": [10, 50], "shoppers": 4000, "rounds": 3, "local_epochs": 1}
QUICK = {"sites": [3], "shoppers": 180, "rounds": 1, "local_epochs": 1}
#: Flower log lines that mark phases of the simulation engine (message prefix -> mark).
_MARKS = {
    "Initialising: RayBackend": "ray_init",
    "Constructed ActorPool": "ray_ready",
    "Triggered stop event": "stop",
    "Terminated RayBackend": "ray_down",
}
_PER_ROUND = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")


# --------------------------------------------------------------------------- config


def sim_config(out: Path, n_sites: int, shoppers: int, rounds: int, local_epochs: int,
               dp: bool, seed: int = 0):
    """The ``SimulationConfig`` of one site count (the ``seqanom simulate`` defaults otherwise)."""
    from simulation.run import SimulationConfig

    return SimulationConfig(out=out, shoppers=shoppers, sites=n_sites, rounds=rounds,
                            local_epochs=local_epochs, dp=dp, baselines=False, seed=seed)


def _config_to_json(cfg) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v
                       for k, v in dataclasses.asdict(cfg).items()})


def _config_from_json(text: str):
    from simulation.run import SimulationConfig

    d = json.loads(text)
    d["out"] = Path(d["out"])
    d["data"] = Path(d["data"]) if d.get("data") else None
    return SimulationConfig(**d)


def prepare(cfg) -> dict:
    """Generate the shoppers and write the site files (``prepare_sites``); describe the data."""
    from simulation.run import prepare_sites
    from simulation.synth import SynthConfig, synthesize_events

    t0 = time.perf_counter()
    events = synthesize_events(SynthConfig(n_shoppers=cfg.shoppers, n_sites=cfg.sites,
                                           seed=cfg.seed))
    trains, tests, _, _ = prepare_sites(cfg, events)
    per_site = [len(t.column("user_id").unique()) for t in trains]
    return {
        "events": events.num_rows,
        "shoppers": cfg.shoppers,
        "train_shoppers": sum(per_site),
        "train_events": sum(t.num_rows for t in trains),
        "test_shoppers": sum(len(t.column("user_id").unique()) for t in tests),
        "train_shoppers_per_site": {"min": min(per_site), "median": statistics.median(per_site),
                                    "max": max(per_site)},
        "prepare_s": round(time.perf_counter() - t0, 2),
    }


# --------------------------------------------------------------------------- workers


def _own_peaks() -> dict:
    """This process's peak RSS: ``VmHWM`` and ``getrusage`` (self, and largest reaped child)."""
    kib = 1 << 20 if sys.platform == "darwin" else 1 << 10
    return {
        "vmhwm_mb": peak_rss_mb(),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
        "ru_maxrss_children_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1),
    }


def centralised_worker(cfg, threads: int | None = None) -> dict:
    """Fit the centralised detector on the pooled training shoppers of all site files."""
    import pyarrow as pa
    import torch

    if threads:
        torch.set_num_threads(threads)

    from seqanom_core.detector import make_detector
    from seqanom_core.ingest import read_events
    from simulation.run import centralised_configs

    model, _, train = centralised_configs(cfg)
    t0 = time.perf_counter()
    sites = sorted((cfg.out / "sites").glob("site-*"), key=lambda p: int(p.name.split("-")[1]))
    pooled = pa.concat_tables([read_events(p / "train.parquet", "seqanom")[0] for p in sites],
                              promote_options="default")
    det = make_detector(model.kind, model_config=model, train_config=train, progress=False).fit(pooled)
    seconds = time.perf_counter() - t0
    r, meta = det.train_result_, det.metadata_
    return {
        "seconds": round(seconds, 2),
        "fit_s": meta["fit_seconds"],
        "sites_pooled": len(sites),
        "train_shoppers": meta["n_train_shoppers"],
        "calibration_shoppers": meta["n_calibration_shoppers"],
        "epochs": train.epochs,
        "steps": r.steps,
        "dp": bool(r.dp),
        "epsilon": r.epsilon if r.dp else None,
        "noise_multiplier": r.noise_multiplier if r.dp else None,
        "final_loss": r.epoch_losses[-1],
        "torch_threads": torch.get_num_threads(),
        "memory": _own_peaks(),
    }


class _FlowerMarks(logging.Handler):
    """Timestamps of the Flower log lines that mark the engine's phases and each round's steps."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)  # the engine's phase lines are DEBUG
        self.marks: dict[str, float] = {}
        self.rounds: dict[str, list[float]] = {k: [] for k in _PER_ROUND}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for prefix, mark in _MARKS.items():
            if msg.startswith(prefix):
                self.marks.setdefault(mark, record.created)
        for step in _PER_ROUND:
            if msg.startswith(step + ":"):
                self.rounds[step].append(record.created)


def federated_worker(cfg) -> dict:
    """Run the federation exactly as ``simulate`` does; time its phases from Flower's log."""
    from simulation.federation import run_federation
    from simulation.run import run_config

    marks = _FlowerMarks()
    logging.getLogger("flwr").addHandler(marks)
    t0 = time.time()
    fed_s = run_federation(cfg.out, run_config(cfg), cfg.sites)
    t1 = time.time()
    rounds = [json.loads(line) for line in
              (cfg.out / "checkpoints" / "metrics.jsonl").read_text().splitlines() if line]
    return {
        "seconds": round(fed_s, 2),
        "phases": phases(marks.marks, marks.rounds, rounds, t0, t1),
        "rounds": len(rounds),
        "site_rounds_declined": sum(bool(s.get("declined")) for r in rounds
                                    for s in r["sites"].values()),
        "site_rounds_rejected": sum(len(r["rejected"]) for r in rounds),
        "dp_train_shoppers_per_site": _site_examples(rounds),
        "epsilon_max": max((s.get("epsilon", 0.0) for r in rounds for s in r["sites"].values()),
                           default=None),
        "final_train_loss": rounds[-1]["train"].get("train-loss") if rounds else None,
        "driver_memory": _own_peaks(),
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
        "ray_num_cpus": max(1, os.cpu_count() or 1),
    }


def _site_examples(rounds: list[dict]) -> dict | None:
    """min / median / max of the shoppers each site trained on in round 1 (DP examples)."""
    if not rounds:
        return None
    n = [s["num-examples"] for s in rounds[0]["sites"].values() if "num-examples" in s]
    if not n:
        return None
    return {"min": min(n), "median": statistics.median(n), "max": max(n)}


def phases(marks: dict[str, float], steps: dict[str, list[float]], rounds: list[dict],
           t0: float, t1: float) -> dict:
    """Where the federated seconds went, from Flower's log timestamps and ``metrics.jsonl``.

    Ray starts lazily, when round 1 first sends messages, so round 1's seconds include it;
    ``rounds_s`` excludes it. ``other_s`` = before round 1 + after the last round (final model,
    engine shutdown).
    """
    total = t1 - t0
    ray_start = marks["ray_ready"] - marks["ray_init"] if {"ray_init", "ray_ready"} <= set(marks) \
        else None
    round_s = [float(r["seconds"]) for r in rounds]
    rounds_total = sum(round_s) - (ray_start or 0.0)
    train = [b - a for a, b in zip(steps["configure_train"], steps["aggregate_train"],
                                   strict=False)]
    measured = iter([b - a for a, b in zip(steps["configure_evaluate"],
                                           steps["aggregate_evaluate"], strict=False)])
    # only calibrated rounds (a threshold; ``calibration-every``) evaluate: 0 for the others
    evaluate = [next(measured, 0.0) if r.get("threshold") is not None else 0.0 for r in rounds]
    if train and ray_start is not None:
        train[0] -= ray_start
    out = {
        "total_s": round(total, 2),
        "ray_start_s": None if ray_start is None else round(ray_start, 2),
        "rounds_s": round(rounds_total, 2),
        "other_s": round(total - rounds_total - (ray_start or 0.0), 2),
        "per_round_s": [round(s, 2) for s in round_s],
        "per_round_train_s": [round(s, 2) for s in train],
        "per_round_evaluate_s": [round(s, 2) for s in evaluate],
        "per_round_rest_s": [round(r - a - b, 2) for r, a, b in zip(
            [s - (ray_start or 0.0) * (i == 0) for i, s in enumerate(round_s)], train, evaluate,
            strict=False)],
        "before_round_1_s": round(steps["configure_train"][0] - t0, 2)
        if steps["configure_train"] else None,
        "shutdown_s": round(t1 - marks["stop"], 2) if "stop" in marks else None,
    }
    return out


# --------------------------------------------------------------------------- orchestration


def _spawn(kind: str, cfg, work: Path, interval: float, threads: int | None = None) -> dict:
    """Run one worker in its own subprocess while sampling its process tree's memory."""
    result_path = work / f"{kind}-{cfg.sites}.json"
    cmd = [sys.executable, "-m", "bench.federation_bench", "--worker", kind,
           "--config", _config_to_json(cfg), "--result", str(result_path)]
    if threads is not None:
        cmd += ["--central-threads", str(threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning")  # Opacus says the same every step
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, start_new_session=True)
    try:
        with TreeMemorySampler(proc.pid, interval=interval) as sampler:
            rc = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{kind} worker for {cfg.sites} sites failed with exit code {rc}")
    memory = sampler.result
    left = _left_behind(memory, proc.pid)
    res = json.loads(result_path.read_text())
    res["process_wall_s"] = round(wall, 2)
    res["tree_memory"] = memory.to_dict()
    res["processes_left_behind"] = left
    return res


def _left_behind(memory, worker_pid: int, grace_s: float = 15.0) -> list[dict]:
    """Processes of a finished worker that still run after ``grace_s``; ended (they are ours)."""
    import psutil

    deadline = time.monotonic() + grace_s
    left = still_running(memory, exclude=(worker_pid,))
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = still_running(memory, exclude=(worker_pid,))
    for p in left:
        log.warning("process %d (%s) outlived its worker; ending it", p["pid"], p["name"])
        try:
            psutil.Process(p["pid"]).kill()
        except psutil.Error:
            pass
    return left


def run(sites: list[int], shoppers: int, rounds: int, local_epochs: int, dp: bool = True,
        tmp_dir: str | None = None, seed: int = 0, interval: float = 0.2,
        central_threads: int = 1, bracket: bool = True) -> dict:
    """For each site count: prepare the data, time centralised and federated training.

    With ``bracket``, centralised training runs before *and* after the federation (it is the
    cheaper run) and the ratio uses the mean of the two, so a change of background load during
    the benchmark shows up as a spread instead of silently skewing the ratio.
    """
    import psutil

    out: dict = {"load_avg_1m_start": round(os.getloadavg()[0], 2), "per_sites": {}}
    order = [*WORKERS, "centralised"] if bracket else list(WORKERS)
    with tempfile.TemporaryDirectory(prefix="seqanom-federation-bench-", dir=tmp_dir) as d:
        work = Path(d)
        for n in sites:
            cfg = sim_config(work / f"sites-{n}", n, shoppers, rounds, local_epochs, dp, seed)
            log.info("%d sites: generating %d shoppers and writing the site files", n, shoppers)
            res: dict = {"data": prepare(cfg)}
            runs: dict[str, list[dict]] = {k: [] for k in WORKERS}
            for kind in order:
                log.info("%d sites: %s training ...", n, kind)
                load = round(os.getloadavg()[0], 2)
                r = _spawn(kind, cfg, work, interval,
                           central_threads if kind == "centralised" else None)
                r["load_avg_1m_before"] = load
                runs[kind].append(r)
                log.info("%d sites: %s %.1f s", n, kind, r["seconds"])
            fed, cent = runs["federated"][0], runs["centralised"][0]
            res["centralised"], res["federated"] = cent, fed
            if len(runs["centralised"]) > 1:
                res["centralised_after"] = runs["centralised"][1]
            cent_runs = [r["seconds"] for r in runs["centralised"]]
            cent_s = statistics.mean(cent_runs)
            ray = fed["phases"]["ray_start_s"] or 0.0
            res["centralised_runs_s"] = cent_runs
            res["centralised_s"] = round(cent_s, 2)
            res["centralised_peak_rss_mb"] = max(r["memory"]["vmhwm_mb"] for r in runs["centralised"])
            res["ratio_federated_over_centralised"] = round(fed["seconds"] / cent_s, 3)
            res["ratio_without_ray_start"] = round((fed["seconds"] - ray) / cent_s, 3)
            res["ratio_range"] = [round(fed["seconds"] / max(cent_runs), 3),
                                  round(fed["seconds"] / min(cent_runs), 3)]
            res["memory_ratio_federated_tree_over_centralised"] = round(
                fed["tree_memory"]["peak_rss_sum_mb"] / res["centralised_peak_rss_mb"], 2)
            out["per_sites"][str(n)] = res
    out["children_left"] = [{"pid": c.pid, "name": c.name()}
                            for c in psutil.Process().children(recursive=True)]
    return out


def summary(results: dict) -> dict:
    """The headline numbers per site count."""
    rows = {}
    for n, r in results["per_sites"].items():
        fed = r["federated"]
        ph = fed["phases"]
        train_s = sum(ph["per_round_train_s"])
        cents = [r["centralised"], r.get("centralised_after")]
        rows[n] = {
            "federated_s": fed["seconds"],
            "centralised_s": r["centralised_s"],
            "centralised_runs_s": r["centralised_runs_s"],
            "ratio": r["ratio_federated_over_centralised"],
            "ratio_range": r["ratio_range"],
            "ratio_without_ray_start": r["ratio_without_ray_start"],
            "ray_start_s": ph["ray_start_s"],
            "federated_local_training_s": round(train_s, 2),
            "federated_evaluation_and_calibration_s": round(ph["rounds_s"] - train_s, 2),
            "federated_peak_rss_sum_mb": fed["tree_memory"]["peak_rss_sum_mb"],
            "federated_peak_pss_sum_mb": fed["tree_memory"]["peak_pss_sum_mb"],
            "federated_driver_ru_maxrss_mb": fed["driver_memory"]["ru_maxrss_mb"],
            "centralised_peak_rss_mb": r["centralised_peak_rss_mb"],
            "processes_left_behind": sum(len(c["processes_left_behind"])
                                         for c in (fed, *cents) if c),
        }
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.federation_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, nargs="+", default=None,
                    help=f"site counts (default {DEFAULTS['sites']}; --quick {QUICK['sites']})")
    ap.add_argument("--shoppers", type=int, default=None,
                    help=f"shoppers in all (default {DEFAULTS['shoppers']})")
    ap.add_argument("--rounds", type=int, default=None, help=f"default {DEFAULTS['rounds']}")
    ap.add_argument("--local-epochs", type=int, default=None,
                    help=f"default {DEFAULTS['local_epochs']}")
    ap.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                    help="DP-SGD at every site and centrally (default on, epsilon 8)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smallest form: {QUICK}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--central-threads", type=int, default=1,
                    help="torch threads of centralised training: 1 (default) like each Ray "
                         "actor; 0 = torch's default (all cores)")
    ap.add_argument("--interval", type=float, default=0.2, help="memory sampling period (s)")
    ap.add_argument("--tmp-dir", default=None, help="where to write the site files and runs")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--worker", choices=WORKERS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_logging()
    if args.worker:
        os.dup2(2, 1)  # this process and everything it starts write to stderr only
        cfg = _config_from_json(args.config)
        res = centralised_worker(cfg, args.central_threads or None) \
            if args.worker == "centralised" \
            else federated_worker(cfg)
        Path(args.result).write_text(json.dumps(res))
        return
    base = QUICK if args.quick else DEFAULTS
    params = {
        "quick": args.quick,
        "sites": args.sites or base["sites"],
        "shoppers": args.shoppers or base["shoppers"],
        "rounds": args.rounds or base["rounds"],
        "local_epochs": args.local_epochs or base["local_epochs"],
        "dp": args.dp,
        "seed": args.seed,
        "memory_sampling_interval_s": args.interval,
        "central_threads": args.central_threads or "torch default",
        "centralised_runs": "one" if args.quick else "before and after the federation (mean)",
    }
    example = sim_config(Path("."), params["sites"][0], params["shoppers"], params["rounds"],
                         params["local_epochs"], args.dp, args.seed)
    params["simulation_config"] = {k: v for k, v in dataclasses.asdict(example).items()
                                   if k not in ("out", "data", "sites")}
    params["timing"] = ("each run in its own subprocess; federated = run_federation's seconds "
                        "(Flower simulation engine on Ray, as seqanom simulate); centralised = "
                        "read the pooled site training files + SequenceDetector.fit")
    t0 = time.perf_counter()
    results = run(params["sites"], params["shoppers"], params["rounds"], params["local_epochs"],
                  args.dp, args.tmp_dir, args.seed, args.interval, args.central_threads,
                  bracket=not args.quick)
    emit(envelope("federation", params, results, round(time.perf_counter() - t0, 1),
                  summary=summary(results)), args.out)


if __name__ == "__main__":
    main()
