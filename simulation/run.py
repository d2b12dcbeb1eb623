"""One simulated federation end to end: partition, inject, federate, baselines, report.

``simulate`` writes everything under ``RUN_DIR``: ``sites/site-k/`` (each site's training events,
labelled test events, labels), ``checkpoints/round-NNNN/`` (model directory + round.json per
round, ``metrics.jsonl``), ``model/`` (the final global model), ``ledgers/`` (each site's
privacy ledger), ``report.md`` with ``figures/``, and ``metrics.json``. Every method is scored on
the same pooled test shoppers of all sites.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from seqanom_core.atomic_files import write_json_atomic
from seqanom_core.audit import AuditConfig, run_audit
from seqanom_core.config import DetectorConfig, DPConfig, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.formats import FormatSpec
from seqanom_core.ingest import IngestReport, read_nonempty_events, write_events
from seqanom_core.privacy import UNIT
from seqanom_core.sequences import split_events_by_shopper
from simulation.baselines import detector_scores, isolation_forest_scores
from simulation.federation import (
    Placement,
    new_run_id,
    rounds_with_site_logs,
    run_federation,
    toml_lines,
)
from simulation.inject import inject_anomalies
from simulation.partition import partition_events, partition_summary
from simulation.pretrained import pretrained_run_config
from simulation.report import write_report
from simulation.synth import SynthConfig, synthesize_events

log = logging.getLogger(__name__)


#: The sites' SGD learning rate under DP at batch 16 (32 -> 16 with lr 1.0 -> 0.5: see batch_size)
DP_SITE_LR = 0.5


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of ``seqanom simulate`` (defaults: the built-in generator, under 5 min on 2 cores)."""

    out: Path = Path("runs/simulate")
    data: Path | None = None
    fmt: str | FormatSpec = "taobao"  # a format name, or a generic mapping (parse_mapping)
    quarantine: Path | None = None  # with data: write rejected rows here
    shoppers: int = 1200  # synthetic shoppers in all (built-in data only)
    sites: int = 4
    partition: str = "natural"
    alpha: float = 0.5
    rounds: int = 5
    local_epochs: int = 4  # 2 -> 4: federated DP AUROC 0.788 -> 0.828 on the default data (AdamW then)
    model: str = "transformer"
    strategy: str = "fedavg"
    dp: bool = True
    epsilon: float = 8.0
    accountant: str = "rdp"  # Opacus accountant of the sites' and baselines' DP: "rdp" or "prv"
    test_fraction: float = 0.3
    anomaly_rate: float = 0.3
    d_model: int = 32
    n_layers: int = 2
    max_len: int = 64
    # 32 -> 16 with the sites' lr 1.0 -> 0.5 (sites and baselines; fresh DP noise): federated DP
    # AUROC on the Taobao sample in 4 IID sites 0.851 -> 0.864 (6 seeds, higher in all 6), Tmall
    # 6 sites 0.875 -> 0.882 (2 seeds), built-in data 0.916 -> 0.917 (2 seeds)
    batch_size: int = 16
    # the sites' local learning rate (run config lr), and site-alone's; None: SGD at 0.5 under
    # DP (the measured best at batch 16), without DP the AdamW default (run_config.LOCAL_LR)
    site_lr: float | None = None
    history_copy: bool = True  # the model's copy term from the shopper's history (models/network.py)
    item_states: str = "basic"  # the item channel's states (TokenizerConfig.item_states)
    baselines: bool = True
    seed: int = 0
    dp_seed: int | None = None  # DP sampling and noise: None = from the OS (secret, not repeatable)
    privacy_mode: str = "local"  # or "local+central" (site-level DP), "local+secagg" (SecAgg+)
    calibration_share: float = 0.4  # of each site's budget, for the calibration releases (DP)
    calibration_every: int = 0  # calibrate every k rounds and after the last (0: last only)
    central_noise_multiplier: float = 1.0
    central_clipping_norm: float = 1.0
    central_epsilon: float = 10.0
    # an empirical privacy audit of site 0 trained alone (seqanom_core.audit), with this many canaries
    audit: bool = False
    audit_canaries: int = 64
    n_heads: int = 4
    pretrained: str = ""  # a model directory to start from (simulation/pretrained.py)
    finetune: str = "all"  # which parameters train (TrainConfig.finetune)
    adapter_rank: int = 8


#: The events a simulation partitions, with the ingest report of the file they were read from
#: (None: the built-in generator's)
Loaded = tuple[pa.Table, IngestReport | None]


def load_events(cfg: SimulationConfig) -> Loaded:
    """The events to partition: ``cfg.data`` read with its ingest report, or the built-in data."""
    if cfg.data is None:
        return synthesize_events(SynthConfig(n_shoppers=cfg.shoppers, n_sites=cfg.sites,
                                             seed=cfg.seed)), None
    return read_nonempty_events(cfg.data, cfg.fmt, quarantine_path=cfg.quarantine)


#: What a simulation writes under RUN_DIR (the only paths a new simulation there replaces).
RUN_OUTPUTS: tuple[str, ...] = ("sites", "ledgers", "checkpoints", "model", "figures",
                                "report.md", "metrics.json", "test_labels.csv",
                                "run-config.toml", "flwr-app", "simulation.json")

#: RUN_DIR/simulation.json: the run's settings, Flower run id, partition and ingest report,
#: written once every site's files are complete; what ``simulate --resume`` continues from
STATE_FILE = "simulation.json"
STATE_VERSION = 1


def written_by_simulation(out: Path) -> bool:
    """Whether ``out`` holds a simulation's outputs: its ``STATE_FILE``, or (a run from before
    that file) the Flower app config every earlier simulation wrote."""
    if (out / STATE_FILE).is_file():
        return True
    app = out / "flwr-app" / "pyproject.toml"
    try:
        return app.is_file() and 'name = "seqanom-simulation"' in app.read_text()[:4096]
    except (OSError, UnicodeDecodeError):
        return False


def clear_previous_run(out: Path, keep: tuple[Path | None, ...] = ()) -> list[str]:
    """Remove an earlier simulation's outputs from ``out`` (only the names in ``RUN_OUTPUTS``).

    Each simulation simulates new sites: the ledgers of an earlier run in the same directory
    would otherwise make its sites continue spending their budgets (with the budget spent,
    the next run trains under enormous noise), and its checkpoints would mix with the new
    ones. A path of ``keep`` (the run's input data, its quarantine file) inside one of them
    is a ConfigError before anything is removed: a simulation never deletes its input.
    Nor a file it did not write: unless ``written_by_simulation(out)`` no output name is
    replaced, and one that exists is a ConfigError.
    Returns the names removed."""
    present = [name for name in RUN_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    if present and not written_by_simulation(out):
        raise ConfigError(f"--out {out} holds {', '.join(present)}, which no seqanom simulation "
                          f"wrote there (it has no {STATE_FILE}); give a new or empty run "
                          "directory, or move them")
    kept = [(Path(p).absolute(), Path(p).resolve()) for p in keep if p is not None]
    for name in RUN_OUTPUTS:
        target = (out / name).absolute()
        for given, real in kept:
            if any(p.is_relative_to(t) for p in (given, real) for t in (target, target.resolve())):
                raise ConfigError(f"{given} lies inside {out / name}, which a new simulation in "
                                  f"--out {out} replaces (it would be deleted); move it or give "
                                  "another --out")
    removed = []
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("%s held an earlier simulation: replaced its %s", out, ", ".join(removed))
    return removed


def prepare_sites(cfg: SimulationConfig, events: pa.Table
                  ) -> tuple[list[pa.Table], list[pa.Table], pd.DataFrame, list[dict]]:
    """Partition, split each site into train/test shoppers, inject into test, write site files
    and the pooled labels (``RUN_DIR/test_labels.csv``), in place of an earlier run's outputs.

    Everything that can refuse the settings (the output path, the run config as the ServerApp
    and sites will parse it, the partition) runs before an earlier run's outputs are replaced.
    Returns (train tables, test tables, pooled labels, partition summary)."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file, not a run directory")
    settings_from_run_config(run_config(cfg))
    scheme = cfg.partition
    if scheme == "natural" and "site" not in events.column_names:
        raise ConfigError(f"--partition natural needs a 'site' column; {cfg.data} has none "
                          "(use --partition iid or dirichlet)")
    parts = partition_events(events, cfg.sites, scheme, alpha=cfg.alpha, seed=cfg.seed)
    clear_previous_run(cfg.out, keep=(cfg.data, cfg.quarantine))
    # first of all: marks what follows as a simulation's outputs (resumable once complete)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / STATE_FILE, {"version": STATE_VERSION, "sites_complete": False})
    trains, tests, labels = [], [], []
    for k, part in enumerate(parts):
        train, test = split_events_by_shopper(part, cfg.test_fraction, cfg.seed + k)
        test, lab = inject_anomalies(test, rate=cfg.anomaly_rate, seed=cfg.seed + 1000 + k)
        d = cfg.out / "sites" / f"site-{k}"
        d.mkdir(parents=True, exist_ok=True)
        write_events(train, d / "train.parquet")
        write_events(test, d / "test.parquet")
        lab.to_csv(d / "labels.csv", index=False)
        trains.append(train)
        tests.append(test)
        labels.append(lab.assign(site=f"site-{k}"))
    pooled = pd.concat(labels, ignore_index=True)
    pooled.to_csv(cfg.out / "test_labels.csv", index=False)
    return trains, tests, pooled, partition_summary(parts)


def run_config(cfg: SimulationConfig) -> dict[str, Any]:
    """The Flower run config of the simulated federation (central DP samples every site)."""
    privacy: dict[str, Any] = {"privacy-mode": cfg.privacy_mode}
    if cfg.privacy_mode == "local+central":
        privacy.update({"central-noise-multiplier": cfg.central_noise_multiplier,
                        "central-clipping-norm": cfg.central_clipping_norm,
                        "central-epsilon": cfg.central_epsilon,
                        "central-sites-per-round": cfg.sites})
    return {**privacy,
        "num-rounds": cfg.rounds, "strategy": cfg.strategy, "model": cfg.model,
        "local-epochs": cfg.local_epochs, "d-model": cfg.d_model, "n-layers": cfg.n_layers,
        "max-len": cfg.max_len, "history-copy": cfg.history_copy, "item-states": cfg.item_states,
        "batch-size": cfg.batch_size,
        "lr": cfg.site_lr if cfg.site_lr is not None else (DP_SITE_LR if cfg.dp else 0.0),
        "dp": cfg.dp, "dp-seed": -1 if cfg.dp_seed is None else cfg.dp_seed,
        "epsilon": cfg.epsilon, "accountant": cfg.accountant, "seed": cfg.seed,
        "min-sites": cfg.sites,
        "calibration-share": cfg.calibration_share, "calibration-every": cfg.calibration_every,
        "data-dir": str((cfg.out / "sites").resolve()),
        "ledger-dir": str((cfg.out / "ledgers").resolve()),
        "checkpoint-dir": str((cfg.out / "checkpoints").resolve()),
        "final-model-dir": str((cfg.out / "model").resolve()), "n-heads": cfg.n_heads,
        **(pretrained_run_config(cfg.pretrained, cfg.finetune, cfg.adapter_rank)
           if cfg.pretrained else {})}


def prepare_flwr_run(cfg: SimulationConfig, loaded: Loaded | None = None) -> Path:
    """Write the sites (as ``simulate`` does) and ``RUN_DIR/run-config.toml`` for ``flwr run``.

    ``loaded``: ``load_events(cfg)``, when already read. No federation and no baselines run;
    returns the run config file's path."""
    events, report = loaded or load_events(cfg)
    partition = prepare_sites(cfg, events)[3]
    write_state(cfg, partition, report)
    path = cfg.out / "run-config.toml"
    path.write_text("\n".join(toml_lines(run_config(cfg))) + "\n")
    return path


def simulate(cfg: SimulationConfig, loaded: Loaded | None = None,
             placement: Placement | None = None) -> dict[str, Any]:
    """Run the whole simulation; returns the metrics written to ``RUN_DIR/metrics.json``.

    ``loaded``: ``load_events(cfg)``, when already read (the command reads the file first, to
    print its ingest summary before the long run). ``placement``: where the sites run (None:
    a Ray instance started for the run; ``federation.Placement``)."""
    t0 = time.time()
    events, report = loaded or load_events(cfg)
    trains, tests, labels, partition = prepare_sites(cfg, events)
    state = write_state(cfg, partition, report)
    return federate_and_report(cfg, state, trains, tests, labels, t0, placement=placement)


def write_state(cfg: SimulationConfig, partition: list[dict], report: IngestReport | None
                ) -> dict[str, Any]:
    """``RUN_DIR/simulation.json`` once the sites are written: what ``resume`` continues from
    (settings, a new Flower run id, partition and ingest summaries). Returns it."""
    state = {"version": STATE_VERSION, "sites_complete": True, "config": config_record(cfg),
             "run_id": new_run_id(), "partition": partition,
             "ingest": None if report is None else report.to_dict() | {"summary": report.summary()}}
    write_json_atomic(cfg.out / STATE_FILE, state)
    return state


def config_record(cfg: SimulationConfig) -> dict[str, Any]:
    """``cfg`` as JSON values (paths as text, a generic mapping by its name)."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    if isinstance(cfg.fmt, FormatSpec):  # a generic mapping: its name, the mapping is in "ingest"
        config["fmt"] = cfg.fmt.name
    return config


def federate_and_report(cfg: SimulationConfig, state: dict[str, Any], trains: list[pa.Table],
                         tests: list[pa.Table], labels: pd.DataFrame, t0: float,
                         resumed_after: int | None = None, placement: Placement | None = None
                         ) -> dict[str, Any]:
    """The federation (resumed after ``resumed_after`` rounds when given; its sites placed by
    ``placement``), the baselines, the report and metrics.json of a simulation whose sites are
    written."""
    test = pa.concat_tables(tests, promote_options="default")
    config = run_config(cfg) | ({"resume": True} if resumed_after is not None else {})
    fed_seconds = run_federation(cfg.out, config, cfg.sites, run_id=state["run_id"],
                                 placement=placement)
    det = SequenceDetector.load(cfg.out / "model", progress=False)
    scored = det.score_shoppers(test)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "federated": (scored.ids.astype(str), scored.scores)}
    thresholds = {"federated": det.threshold_}
    privacy = det.metadata_["privacy"]
    methods: dict[str, dict[str, Any]] = {"federated": {
        "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"),
        "seconds": round(fed_seconds, 1)}}
    for g in privacy.get("guarantees", []):
        if g.get("level") == "site":
            methods["federated"].update({"site_epsilon": g["epsilon"], "site_delta": g["delta"]})
    if cfg.baselines:
        _baselines(cfg, trains, test, curves, thresholds, methods)
    audit = site_audit(cfg, trains[0]) if cfg.audit else None
    rounds = rounds_with_site_logs(
        [json.loads(line) for line in
         (cfg.out / "checkpoints" / "metrics.jsonl").read_text().splitlines() if line],
        cfg.out / "ledgers")
    metrics = {
        "config": state["config"],
        "ingest": state["ingest"],
        "privacy": privacy | {"unit": UNIT if cfg.dp else None},
        "stop_reason": det.metadata_.get("stop_reason") or None,
        "partition": state["partition"], "thresholds": thresholds, "methods": methods,
        # the target of every method's threshold (the federation's and the baselines' default)
        "alert_rate": settings_from_run_config(run_config(cfg)).federation.alert_rate,
        "seconds": round(time.time() - t0, 1),
    }
    if resumed_after is not None:
        metrics["resumed_after_round"] = resumed_after
    if audit is not None:
        metrics["audit"] = audit
    write_report(cfg.out, metrics, curves, labels, rounds)
    return json.loads((cfg.out / "metrics.json").read_text())


def centralised_configs(cfg: SimulationConfig) -> tuple[ModelConfig, TrainConfig, TrainConfig]:
    """(model, plain training, training with the run's DP setting) of the centralised baselines:
    the federation's model, trained for its total epochs (rounds x local epochs)."""
    model = ModelConfig(kind=cfg.model, d_model=cfg.d_model, n_layers=cfg.n_layers,
                        n_heads=cfg.n_heads, max_len=cfg.max_len, history_copy=cfg.history_copy)
    plain = TrainConfig(epochs=cfg.rounds * cfg.local_epochs, batch_size=cfg.batch_size,
                        seed=cfg.seed)
    dp = (dataclasses.replace(plain, dp=DPConfig(epsilon=cfg.epsilon, seed=cfg.dp_seed,
                                                 accountant=cfg.accountant))
          if cfg.dp else plain)
    return model, plain, dp


def _baselines(cfg: SimulationConfig, trains: list[pa.Table], test: pa.Table,
               curves: dict[str, Any], thresholds: dict[str, float],
               methods: dict[str, dict[str, Any]]) -> None:
    """Centralised (plain and DP, AdamW as ``seqanom train``), each site alone (the federation's
    local training and DP setting), all from the federation's start, and IsolationForest."""
    model, plain, dp = centralised_configs(cfg)
    pooled = pa.concat_tables(trains, promote_options="default")
    runs = [("centralised", pooled, plain)]
    if cfg.dp:
        runs.append(("centralised-dp", pooled, dp))
    # each site alone trains as it does in the federation (same optimiser, lr, epochs and DP),
    # without the others: the comparison isolates what federating adds
    local = site_alone_config(cfg)
    runs += [(f"site-alone:site-{k}", t, local) for k, t in enumerate(trains)]
    for name, train, tcfg in runs:
        t0 = time.time()
        ids, scores, info = detector_scores(train, test, model=model, train=tcfg, init=cfg.pretrained,
                                            tokenizer=TokenizerConfig(item_states=cfg.item_states))
        curves[name] = (ids, scores)
        thresholds[name] = info["threshold"]
        methods[name] = {"epsilon": info["epsilon"], "delta": info["delta"],
                         "seconds": round(time.time() - t0, 1)}
        log.info("baseline %s: %.1f s", name, time.time() - t0)
    ids, scores = isolation_forest_scores(pooled, test, seed=cfg.seed)
    curves["isolation-forest"] = (ids, scores)
    methods["isolation-forest"] = {"epsilon": None, "delta": None}


def site_alone_config(cfg: SimulationConfig) -> TrainConfig:
    """Training of one site alone: the federation's local optimiser and lr, its DP setting, and
    its total epochs (rounds x local epochs)."""
    site = settings_from_run_config(run_config(cfg)).train
    return dataclasses.replace(centralised_configs(cfg)[2], optimizer=site.optimizer, lr=site.lr)


def site_audit(cfg: SimulationConfig, train: pa.Table) -> dict[str, Any]:
    """Empirical privacy audit (``seqanom_core.audit``) of site 0 trained alone on its own
    training shoppers with the run's model and DP setting; ``cfg.audit_canaries`` canaries."""
    model = centralised_configs(cfg)[0]
    audit = AuditConfig(canaries=cfg.audit_canaries, canary_length=min(32, cfg.max_len - 1),
                        seed=cfg.seed)
    record = run_audit(train, DetectorConfig(TokenizerConfig(item_states=cfg.item_states), model,
                                             site_alone_config(cfg)), audit)
    log.info("privacy audit of site-0: MIA AUC %s, epsilon lower bound %.3f",
             record["mia_auc"], record["epsilon_lower_bound"])
    return {"site": "site-0", **record}
