"""The researcher's commands: ``inject``, ``split``, ``synth``, ``demo``, ``simulate``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from seqanom_core.config import ITEM_STATES, TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.privacy import guarantee_text
from simulation.cli.inputs import (
    add_input_args,
    add_model_kind_arg,
    check_paths,
    event_format,
    read_event_input,
    require_data,
    seed_int,
    shopper_ids,
)
from simulation.cli.placement import (
    PLACEMENT_OPTIONS,
    add_placement_args,
    flwr_run_lines,
    placement_from_args,
)
from simulation.cli.pretrain_command import add_pretrained_args, with_pretrained

log = logging.getLogger("seqanom")


def cmd_inject(args: argparse.Namespace) -> int:
    """Inject labelled anomalies into chosen shoppers and write events + labels."""
    from seqanom_core.ingest import write_events
    from simulation.inject import inject_anomalies

    check_paths({"data": args.data},
                {"out": args.out, "labels": args.labels, "quarantine": args.quarantine})
    events, report = read_event_input(args)
    print(report.summary())
    kinds = args.kinds.split(",") if args.kinds else None
    out_events, labels = inject_anomalies(events, rate=args.rate, kinds=kinds, seed=args.seed)
    write_events(out_events, args.out)
    Path(args.labels).parent.mkdir(parents=True, exist_ok=True)
    labels.to_csv(args.labels, index=False)
    counts = labels[labels.is_anomalous == 1].kind.value_counts().to_dict()
    print(f"injected anomalies into {int(labels.is_anomalous.sum())} of {len(labels)} shoppers "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
          f"wrote {args.out} and {args.labels}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Split an event log by shopper into train and test files (seeded, whole shoppers)."""
    from seqanom_core.ingest import write_events
    from seqanom_core.sequences import split_events_by_shopper

    if not 0 < args.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), not {args.test_fraction}")
    check_paths({"data": args.data}, {"train_out": args.train_out, "test_out": args.test_out,
                                      "quarantine": args.quarantine})
    events, report = read_event_input(args)
    print(report.summary())
    train, test = split_events_by_shopper(events, args.test_fraction, args.seed)
    write_events(train, args.train_out)
    write_events(test, args.test_out)
    n_train = len(shopper_ids(train))
    n_test = len(shopper_ids(test))
    print(f"{n_train} shoppers -> {args.train_out}, {n_test} shoppers -> {args.test_out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate realistic synthetic shopper events (calibrated on public samples)."""
    from seqanom_core.ingest import write_events
    from simulation.synth import SynthConfig, synthesize_events

    if args.shoppers < 1 or args.sites < 1:
        raise ConfigError("--shoppers and --sites must be positive")
    check_paths({}, {"out": args.out})
    t0 = time.time()
    table = synthesize_events(SynthConfig(n_shoppers=args.shoppers, n_sites=args.sites, seed=args.seed))
    write_events(table, args.out)
    print(f"wrote {table.num_rows} events of {args.shoppers} shoppers at {args.sites} site(s) "
          f"to {args.out} in {time.time() - t0:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Main job on the embedded default: synth -> train on clean shoppers -> inject -> score."""
    from seqanom_core.config import ModelConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.ingest import write_events
    from seqanom_core.metrics import detection_report
    from seqanom_core.sequences import split_events_by_shopper
    from simulation.inject import inject_anomalies
    from simulation.synth import SynthConfig, synthesize_events

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events = synthesize_events(SynthConfig(n_shoppers=args.shoppers, n_sites=1, seed=args.seed))
    train_ev, test_ev = split_events_by_shopper(events, 0.3, args.seed)
    test_ev, labels = inject_anomalies(test_ev, rate=0.2, seed=args.seed)
    write_events(train_ev, out / "train_events.csv.gz")
    write_events(test_ev, out / "test_events.csv.gz")
    labels.to_csv(out / "test_labels.csv", index=False)
    print(f"synthetic data: {len(shopper_ids(train_ev))} training shoppers, {len(shopper_ids(test_ev))} "
          f"test shoppers ({int(labels.is_anomalous.sum())} with injected anomalies) in {out}")
    det = make_detector(args.model, model_config=ModelConfig(kind=args.model),
                        train_config=TrainConfig(epochs=args.epochs, seed=args.seed), progress=not args.quiet)
    det.fit(train_ev).save(out / "model")
    scored = det.score_shoppers(test_ev)
    lab = labels.set_index("user_id").loc[scored.ids]
    rep = detection_report(lab.is_anomalous.to_numpy(), scored.scores, det.threshold_,
                           lab.kind.tolist())
    (out / "metrics.json").write_text(json.dumps(rep, indent=2))
    print(f"{args.model}: AUROC {rep['auroc']:.4f}, AUPRC {rep['auprc']:.4f} on held-out test "
          f"shoppers; at the threshold precision {rep['at_threshold']['precision']:.3f}, "
          f"recall {rep['at_threshold']['recall']:.3f}")
    for k, v in rep["auroc_per_kind"].items():
        print(f"  {k:20s} AUROC {v:.3f}")
    print(f"model in {out / 'model'}, metrics in {out / 'metrics.json'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a federation on one machine: partition data into sites, inject labelled anomalies
    into each site's test shoppers, train one global model with Flower (DP-SGD at every site),
    compare it with centralised, site-alone and IsolationForest baselines on the same test
    shoppers, and write RUN_DIR/report.md, figures, metrics.json, checkpoints and model/."""
    from simulation import run

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k, default in args.option_defaults.items()
                 if k not in ("help", "resume", "out", *PLACEMENT_OPTIONS)
                 and getattr(args, k, default) != default]
        if given:
            raise ConfigError(f"--resume continues the run in --out {args.out} with the settings "
                              f"it started with: {', '.join(given)} cannot be given")
        if not Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out}: no such run directory to resume")
        from simulation.resume import resume

        placement = placement_from_args(args)
        return _print_simulation(resume(Path(args.out), placement), Path(args.out))
    if args.data is None and (args.format != "taobao" or args.mapping or args.quarantine):
        raise ConfigError("--format, --mapping and --quarantine are only used with --data")
    if args.local_epochs < 1:  # the run config's error would name only "epochs"
        raise ConfigError(f"--local-epochs must be 1 or more, not {args.local_epochs}")
    if not args.dp and args.epsilon is not None:
        raise ConfigError("--epsilon is a budget of DP training: it cannot go with --no-dp")
    if not args.dp and args.dp_seed is not None:
        raise ConfigError("--dp-seed seeds DP training: it cannot go with --no-dp")
    if not args.dp and args.accountant is not None:
        raise ConfigError("--accountant accounts DP training: it cannot go with --no-dp")
    placement = placement_from_args(args)
    fmt = event_format(args)
    if args.data is not None:
        require_data(args.data)
    # an earlier simulation's outputs under --out are replaced: nothing given may lie in them
    check_paths({"data": args.data}, {"quarantine": args.quarantine, "out": args.out},
                dirs=["out"], replaced={"out": [Path(args.out) / n for n in run.RUN_OUTPUTS]})
    cfg = run.SimulationConfig(
        out=Path(args.out), data=Path(args.data) if args.data else None, fmt=fmt,
        quarantine=Path(args.quarantine) if args.quarantine else None,
        shoppers=args.shoppers, sites=args.sites,
        partition=args.partition or ("natural" if args.data is None else "iid"),
        alpha=args.alpha, rounds=args.rounds, local_epochs=args.local_epochs, model=args.model,
        strategy=args.strategy, dp=args.dp, epsilon=8.0 if args.epsilon is None else args.epsilon,
        accountant=args.accountant or "rdp",
        baselines=not args.no_baselines, history_copy=not args.no_history_copy,
        item_states=args.item_states,
        seed=args.seed, dp_seed=args.dp_seed, privacy_mode=args.privacy_mode,
        central_noise_multiplier=args.central_noise, central_clipping_norm=args.central_clip,
        central_epsilon=args.central_epsilon, calibration_share=args.calibration_share,
        calibration_every=args.calibration_every, audit=args.audit,
        audit_canaries=args.audit_canaries)
    cfg, start = with_pretrained(cfg, args)
    loaded = None
    if cfg.data is not None:  # read first: its ingest summary comes before the long run
        _events, report = loaded = run.load_events(cfg)
        if report is not None:
            print(report.summary())
    if start:
        print(start)
    if args.prepare_only:
        path = run.prepare_flwr_run(cfg, loaded)
        print(f"{cfg.sites} sites written under {cfg.out / 'sites'}; run config: {path}")
        print("run them with Flower's simulation runtime (README, 'flwr run'):")
        for line in flwr_run_lines(placement, cfg.sites, str(path)):
            print(line)
        return 0
    return _print_simulation(run.simulate(cfg, loaded, placement), cfg.out)


def _print_simulation(metrics: dict, out: Path) -> int:
    """What ``simulate`` prints of a finished run's metrics."""
    ev = metrics.get("evaluation", {})
    resumed = metrics.get("resumed_after_round")
    if resumed is not None:
        print(f"resumed after round {resumed}")
    print(f"simulation finished in {metrics['seconds']:.0f} s; report: {out / 'report.md'}")
    for name, m in ev.items():
        eps = metrics.get("methods", {}).get(name, {}).get("epsilon")
        eps_txt = f", epsilon {eps:.3f}" if isinstance(eps, (int, float)) else ""
        fa = m.get("false_alert_rate")
        fa_txt = f"  normal flagged {fa:6.1%}" if isinstance(fa, (int, float)) else " " * 22
        low = m.get("recall_at_fpr") or {}
        low_txt = ("  recall@FPR 0.1/0.2/1% " + "/".join(f"{low[k]:.2f}" for k in low)
                   if low else "")
        print(f"  {name:24s} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}{fa_txt}{eps_txt}"
              f"{low_txt}".rstrip())
    priv = metrics.get("privacy", {})
    print(f"privacy mode: {priv.get('mode', 'local')}")
    for g in priv.get("guarantees", []):
        scope = "worst site" if g["level"] == "shopper" else "whole federation"
        print(f"  {guarantee_text(g['epsilon'], g['delta'], g['protects'])} ({scope}), "
              f"over {priv['rounds']} rounds; accounted by {g['accounted_by'].split(':')[0]}")
    if not priv.get("guarantees"):
        print("  no differential privacy (no epsilon is claimed)")
    if priv.get("epsilon_by_kind"):
        parts = ", ".join(f"{k} {v:.3f}" for k, v in priv["epsilon_by_kind"].items())
        print(f"  covers everything the sites sent; epsilon of each kind alone: {parts}")
    saw = priv.get("server_saw_individual_updates", True)
    print("  the server saw each site's update" if saw else
          "  the server saw only the sum of the sites' updates (SecAgg+)")
    if metrics.get("stop_reason"):
        print(f"stopped early (planned): {metrics['stop_reason']}")
    if metrics.get("audit"):
        a = metrics["audit"]
        acc = a["epsilon_accounted"]
        print(f"privacy audit ({a['site']} alone, {a['canaries']['canaries']} canaries): "
              f"MIA AUC {'-' if a['mia_auc'] is None else format(a['mia_auc'], '.3f')}, "
              f"epsilon lower bound {a['epsilon_lower_bound']:.3f}"
              + ("" if acc is None else f" (accounted {acc:.3f})"))
    print(f"global model: {out / 'model'} (seqanom score --model accepts it)")
    return 0




def add_research_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register inject / split / synth / demo / simulate with the seqanom parser's ``add``."""
    p = add("inject", cmd_inject, "inject labelled anomalies into shoppers of an event log")
    add_input_args(p, tokens=False)
    p.add_argument("--out", required=True, metavar="EVENTS", help=".csv, .csv.gz or .parquet")
    p.add_argument("--labels", required=True, metavar="LABELS.csv")
    p.add_argument("--rate", type=float, default=0.1, help="fraction of shoppers made anomalous")
    p.add_argument("--kinds", help="comma-separated anomaly kinds (default: all)")
    p.add_argument("--seed", type=seed_int, default=0)

    p = add("split", cmd_split, "split an event log by shopper into train and test files")
    add_input_args(p, tokens=False)
    p.add_argument("--train-out", required=True, metavar="PATH", help=".csv, .csv.gz or .parquet")
    p.add_argument("--test-out", required=True, metavar="PATH")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=seed_int, default=0)

    p = add("synth", cmd_synth, "generate synthetic shopper events")
    p.add_argument("--shoppers", type=int, required=True)
    p.add_argument("--sites", type=int, default=1)
    p.add_argument("--out", required=True, metavar="PATH", help=".csv, .csv.gz or .parquet")
    p.add_argument("--seed", type=seed_int, default=0)

    p = add("demo", cmd_demo, "main job on built-in data: synth, train, inject, score, report")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--shoppers", type=int, default=1500)
    add_model_kind_arg(p)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=seed_int, default=0)

    p = add("simulate", cmd_simulate, "simulate a federation of sites on one machine, with report")
    p.add_argument("--data", metavar="PATH", help="event log to partition (default: built-in generator)")
    p.add_argument("--format", default="taobao",
                   help="with --data: format name (default: taobao; the others are listed in "
                        "'train --help')")
    p.add_argument("--mapping", metavar="SPEC",
                   help="with --format generic: column mapping (as for 'train --help')")
    p.add_argument("--quarantine", metavar="PATH",
                   help="with --data: write rejected rows (with reason and line) to this CSV")
    p.add_argument("--shoppers", type=int, default=1200, help="built-in data: shoppers in all")
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--partition", choices=["natural", "iid", "dirichlet"],
                   help="natural: by the data's site column (built-in default); iid (default "
                        "with --data); dirichlet: non-IID over categories")
    p.add_argument("--alpha", type=float, default=0.5, help="dirichlet concentration")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=4,
                   help="local epochs per round (the baselines train rounds x this many epochs)")
    add_model_kind_arg(p)
    p.add_argument("--strategy", default="fedavg",
                   choices=["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
    p.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                   help="DP-SGD at every site (one shopper = one example)")
    p.add_argument("--epsilon", type=float, help="per-site privacy budget (default 8)")
    p.add_argument("--accountant", choices=["rdp", "prv"],
                   help="Opacus accountant of the sites' (and baselines') DP-SGD: rdp (default) "
                        "or prv (tighter: less noise for the same epsilon, slower to compute)")
    p.add_argument("--privacy-mode", choices=["local", "local+central", "local+secagg"],
                   default="local",
                   help="local: DP-SGD at every site; local+central: plus site-level DP "
                        "(Flower's central-DP wrapper and accountant); local+secagg: plus "
                        "secure aggregation (Flower SecAgg+: the server sees only the sum)")
    p.add_argument("--central-noise", type=float, default=1.0,
                   help="local+central: noise multiplier of the site-level Gaussian mechanism")
    p.add_argument("--central-clip", type=float, default=1.0,
                   help="local+central: L2 norm each site's update is clipped to")
    p.add_argument("--central-epsilon", type=float, default=10.0,
                   help="local+central: site-level budget; the run stops before passing it")
    p.add_argument("--calibration-share", type=float, default=0.4,
                   help="with DP: share of each site's budget its calibration releases spend "
                        "(accounted in its ledger; DP-SGD gets the rest)")
    p.add_argument("--calibration-every", type=int, default=0,
                   help="calibrate every K rounds and after the last (0: after the last only; "
                        "each calibration is a release that costs privacy)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    p.add_argument("--audit", action="store_true",
                   help="also audit privacy empirically: canaries planted in site 0's training "
                        "data, trained alone with the run's model and DP setting, attacked by "
                        "membership inference ('seqanom audit'); a line in the report, 'audit' "
                        "in metrics.json")
    p.add_argument("--audit-canaries", type=int, default=64, metavar="N",
                   help="with --audit: canary shoppers (default 64)")
    p.add_argument("--no-history-copy", action="store_true",
                   help="train the federation and the baselines without the model's copy term "
                        "from each shopper's own history (README, How it works)")
    p.add_argument("--item-states", choices=ITEM_STATES, default=TokenizerConfig.item_states,
                   help="the item token of the federation and the baselines: basic (new, same "
                        "as the previous event, seen earlier) or funnel (also the furthest "
                        "funnel stage already reached on a seen item; default "
                        f"{TokenizerConfig.item_states})")
    add_pretrained_args(p)
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the sites and RUN_DIR/run-config.toml, for 'flwr run'")
    p.add_argument("--out", default="runs/simulate", metavar="RUN_DIR")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="partition, injection, initial model, shuffles (not DP noise: --dp-seed)")
    p.add_argument("--dp-seed", type=seed_int, metavar="N",
                   help="seed the sites' and baselines' DP sampling and noise (every site and "
                        "round its own): a reproducible run whose noise anyone with N can remove. "
                        "Default: seeded from the OS, secret, so runs differ a little")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped or killed simulation in --out with its own "
                        "settings (RUN_DIR/simulation.json): sites, ledgers and checkpoints are "
                        "kept and the federation goes on after its latest complete round; give "
                        "no other option but --ray-address and --gpus-per-site")
    add_placement_args(p)
    p.set_defaults(option_defaults={a.dest: a.default for a in p._actions})

