"""The ``seqanom`` command: train, score, inject, split, synth, demo, simulate, ledger, and the
deployment commands of ``server/deploy_cli.py`` (credentials, superlink, connection) and
``client/deploy_cli.py`` (supernode), which build Flower command lines without importing flwr.

Only this module (and the other CLIs) print; the library logs. Any ``SeqanomError`` is shown as
one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from seqanom_core.errors import ConfigError, SeqanomError

EXIT_ERROR = 2  # bad input or settings: a one-line error
EXIT_INTERNAL = 3  # an unexpected failure (traceback with --verbose)
log = logging.getLogger("seqanom")


# --------------------------------------------------------------------------- input helpers
def seed_int(text: str) -> int:
    """argparse type of --seed: a non-negative integer (NumPy rejects negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def distinct_outputs(**paths: str | None) -> None:
    """Refuse options that name the same file: an output would silently overwrite the input
    (``data``) or another output."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(path).expanduser().resolve()
        flag = "--" + option.replace("_", "-")
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} both name {path}; give them different files")
        seen[key] = flag


def add_input_args(p: argparse.ArgumentParser, required: bool = True, tokens: bool = True) -> None:
    """--data / --format / --mapping / --quarantine (``tokens``: the command reads token files)."""
    from seqanom_core.formats import list_formats

    p.add_argument("--data", required=required, metavar="PATH",
                   help="events file: .csv, .csv.gz or .parquet"
                   + (" (or .txt for --format tokens)" if tokens else ""))
    token_text = ("'tokens' (one sequence of space-separated integer event ids per line), "
                  if tokens else "")
    p.add_argument("--format", default="seqanom", metavar="NAME",
                   help="input format: " + ", ".join(list_formats()) + ", " + token_text
                   + "or 'generic' with --mapping "
                   "(default: seqanom, the canonical format written by synth/inject)")
    p.add_argument("--mapping", metavar="SPEC",
                   help="with --format generic: column mapping, e.g. "
                   "'user_id=visitorid,item_id=itemid,category_id=-,behavior=event,"
                   "timestamp=timestamp,behaviors=view:view;addtocart:cart;transaction:buy,"
                   "time=unix_ms' (see README)")
    p.add_argument("--quarantine", metavar="PATH",
                   help="write rejected rows (with reason and line) to this CSV")


def event_format(args: argparse.Namespace) -> Any:
    """--format (with --mapping for generic) as what ``read_events`` takes: a name or a spec."""
    from seqanom_core.formats import parse_mapping

    if args.format == "tokens":
        raise ConfigError(f"'{args.command}' works on event logs, not on pre-tokenised sequences")
    if args.format == "generic":
        if not args.mapping:
            raise ConfigError("--format generic needs --mapping")
        return parse_mapping(args.mapping)
    if args.mapping:
        raise ConfigError("--mapping is only used with --format generic")
    return args.format


def read_event_input(args: argparse.Namespace) -> tuple[Any, Any]:
    """Read --data (--format, --mapping, --quarantine) as an events table: (table, report)."""
    from seqanom_core.ingest import read_nonempty_events

    return read_nonempty_events(args.data, event_format(args), quarantine_path=args.quarantine)


def load_input(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, Any, Any]:
    """Read --data: returns (SequenceSet, events table or None, ingest report)."""
    from seqanom_core.ingest import read_token_sequences
    from seqanom_core.sequences import build_sequences, sequences_from_tokens

    if args.format == "tokens":
        toks, report = read_token_sequences(args.data, quarantine_path=args.quarantine)
        return sequences_from_tokens(toks.ids, toks.tokens, tokenizer), None, report
    events, report = read_event_input(args)
    return build_sequences(events, tokenizer), events, report


def _shopper_ids(events: Any) -> Any:
    """Distinct shopper ids of an events table."""
    import pyarrow.compute as pc

    return pc.unique(events.column("user_id"))


def read_labels(path: str) -> dict[str, tuple[int, str]]:
    """Labels CSV (user_id,is_anomalous[,kind]) -> {user_id: (label, kind)}."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"user_id": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read labels: {err}") from err
    for col in ("user_id", "is_anomalous"):
        if col not in df.columns:
            raise ConfigError(f"{path}: labels need a '{col}' column (found {list(df.columns)})")
    flags = df["is_anomalous"].astype(str).str.strip()
    bad = ~flags.isin(["0", "1"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{path}: line {row + 2}: is_anomalous must be 0 or 1, not "
                          f"{df['is_anomalous'].iloc[row]!r} ({int(bad.sum())} such rows)")
    dup = df["user_id"].duplicated(keep=False)
    if dup.any():
        raise ConfigError(f"{path}: user_id {df['user_id'][dup].iloc[0]!r} is listed more than once "
                          f"({int(dup.sum())} rows share an id)")
    kinds = df["kind"].astype(str) if "kind" in df.columns else [""] * len(df)
    return {u: (int(y), str(k)) for u, y, k in zip(df["user_id"], flags, kinds, strict=True)}


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector on normal-looking shoppers and save its model directory."""
    from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.privacy import AccountantState

    tok = TokenizerConfig(category_buckets=args.category_buckets, session_gap_s=args.session_gap)
    dp = None
    if args.dp:
        if args.epsilon is None and args.noise_multiplier is None:
            raise ConfigError("--dp needs --epsilon (a budget) or --noise-multiplier")
        dp = DPConfig(epsilon=args.epsilon, delta=args.delta, noise_multiplier=args.noise_multiplier,
                      max_grad_norm=args.max_grad_norm, seed=args.dp_seed)
    elif args.epsilon is not None or args.noise_multiplier is not None or args.dp_seed is not None:
        raise ConfigError("--epsilon/--noise-multiplier/--dp-seed need --dp")
    model = ModelConfig(kind=args.model, d_model=args.d_model, n_layers=args.layers,
                        max_len=args.max_len)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        lr_schedule=args.lr_schedule, calibration_fraction=args.calibration_fraction,
                        alert_rate=args.alert_rate, seed=args.seed, device=args.device, dp=dp)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a model directory")
    distinct_outputs(data=args.data, quarantine=args.quarantine, ledger=args.ledger)
    seqs, _, report = load_input(args, tok)
    print(report.summary())
    prior = AccountantState.load(args.ledger) if args.ledger and Path(args.ledger).exists() else None
    det = make_detector(args.model, model=model, tokenizer=tok, train=train,
                        progress=not args.quiet)
    t0 = time.time()
    det.fit(seqs, accountant_state=prior)
    out = det.save(args.out)
    if args.ledger and det.train_result_.accountant_state is not None:
        det.train_result_.accountant_state.save(args.ledger)
    meta = det.metadata_
    print(f"trained {args.model} on {meta['n_train_shoppers']} shoppers "
          f"({meta['n_train_events']} events), calibrated on {meta['n_calibration_shoppers']} "
          f"held-out shoppers, {time.time() - t0:.1f} s; final loss {meta['epoch_losses'][-1]:.3f}")
    print(f"threshold {det.threshold_:.3f} for a target alert rate of {args.alert_rate:.1%}")
    print(privacy_line(meta["privacy"]))
    print(f"model written to {out}")
    return 0


def privacy_line(p: dict[str, Any]) -> str:
    """One exact sentence about the privacy of a model's weights."""
    if not p.get("dp"):
        return "privacy: none (trained without differential privacy)"
    return (f"privacy: ({p['epsilon']:.3f}, {p['delta']:.1e})-DP for {p['unit']}; "
            f"{p['accountant']}; noise multiplier {p['noise_multiplier']:.3f}, "
            f"clip {p['max_grad_norm']}"
            + (f"; sampling and noise {p['randomness']}" if p.get("randomness") else ""))


def cmd_score(args: argparse.Namespace) -> int:
    """Score every shopper with a saved model; write user_id,score,flagged + explanations."""
    import pandas as pd

    from seqanom_core.detector import SequenceDetector
    from seqanom_core.metrics import detection_report

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be 1 or more, not {args.top_k}")
    if args.metrics_out and not args.labels:
        raise ConfigError("--metrics-out needs --labels (the metrics compare scores with labels)")
    distinct_outputs(data=args.data, out=args.out, metrics_out=args.metrics_out,
                     quarantine=args.quarantine)
    for option, path in (("--out", args.out), ("--metrics-out", args.metrics_out)):
        if path is not None and Path(path).is_dir():
            raise ConfigError(f"{option} {path} is a directory, not a file")
    det = SequenceDetector.load(args.model, device=args.device, progress=not args.quiet)
    if (det.source_ == "tokens") != (args.format == "tokens"):
        raise ConfigError(f"{args.model} was trained on '{det.source_}' input; "
                          f"--format {args.format} does not match")
    seqs, events, report = load_input(args, det.tokenizer)
    print(report.summary())
    scored = det.score_shoppers(seqs)
    flagged = scored.scores > det.threshold_
    explanations = []
    for i in range(len(scored.ids)):
        if flagged[i] or args.explain_all:
            ex = det.explain(scored, i, events, top_k=args.top_k)
            explanations.append((ex["driver_text"], " | ".join(_event_text(e) for e in ex["events"])))
        else:
            explanations.append(("", ""))
    df = pd.DataFrame({
        # scores as computed: a rounded score equal to the threshold could look flagged
        "user_id": scored.ids, "score": scored.scores, "flagged": flagged.astype(int),
        "driver": [e[0] for e in explanations], "top_events": [e[1] for e in explanations],
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"scored {len(df)} shoppers: {int(flagged.sum())} flagged "
          f"(alert rate {flagged.mean():.2%} at threshold {det.threshold_:.3f}, "
          f"calibrated for {det.metadata_.get('alert_rate', float('nan')):.1%}); wrote {args.out}")
    if args.labels:
        labels = read_labels(args.labels)
        missing = [u for u in scored.ids if u not in labels]
        if missing:
            raise ConfigError(f"{args.labels}: no label for {len(missing)} scored shoppers "
                              f"(e.g. {str(missing[0])!r})")
        y = np.array([labels[u][0] for u in scored.ids])
        kinds = [labels[u][1] for u in scored.ids]
        if len(set(y.tolist())) < 2:
            print(f"against {args.labels}: all {len(y)} scored shoppers are labelled "
                  f"{'anomalous' if y[0] else 'normal'}, so AUROC and AUPRC are undefined")
            return 0
        rep = detection_report(y, scored.scores, det.threshold_, kinds)
        at = rep["at_threshold"]
        print(f"against {args.labels}: AUROC {rep['auroc']:.4f}, AUPRC {rep['auprc']:.4f}, "
              f"precision {at['precision']:.3f} / recall {at['recall']:.3f} at the threshold")
        print(f"  normal shoppers flagged: {int(at['false_alerts'])} of {int((y == 0).sum())} "
              f"({at['false_alert_rate']:.2%}; the threshold targets "
              f"{det.metadata_.get('alert_rate', float('nan')):.1%} of normal shoppers)")
        for k, v in rep.get("auroc_per_kind", {}).items():
            print(f"  {k:20s} AUROC {v:.3f}  recall@threshold {rep['recall_per_kind'][k]:.3f}")
        if args.metrics_out:
            Path(args.metrics_out).write_text(json.dumps(rep, indent=2))
            print(f"metrics written to {args.metrics_out}")
    return 0


def _event_text(e: dict[str, Any]) -> str:
    when = ""
    if "timestamp" in e:
        when = time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime(e["timestamp"]))
    state = f" ({e['item_state']})" if e.get("item_state") else ""
    return (f"{when}#{e['position']} {e['observed']}{state} p={e['observed_prob']:.3g}, "
            f"expected {e['expected']} p={e['expected_prob']:.2g}")


def cmd_inject(args: argparse.Namespace) -> int:
    """Inject labelled anomalies into chosen shoppers and write events + labels."""
    from seqanom_core.ingest import write_events
    from simulation.inject import inject_anomalies

    distinct_outputs(data=args.data, out=args.out, labels=args.labels, quarantine=args.quarantine)
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
    distinct_outputs(data=args.data, train_out=args.train_out, test_out=args.test_out,
                     quarantine=args.quarantine)
    events, report = read_event_input(args)
    print(report.summary())
    train, test = split_events_by_shopper(events, args.test_fraction, args.seed)
    write_events(train, args.train_out)
    write_events(test, args.test_out)
    n_train = len(_shopper_ids(train))
    n_test = len(_shopper_ids(test))
    print(f"{n_train} shoppers -> {args.train_out}, {n_test} shoppers -> {args.test_out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate realistic synthetic shopper events (calibrated on public samples)."""
    from seqanom_core.ingest import write_events
    from simulation.synth import SynthConfig, synthesize_events

    if args.shoppers < 1 or args.sites < 1:
        raise ConfigError("--shoppers and --sites must be positive")
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
    print(f"synthetic data: {len(_shopper_ids(train_ev))} training shoppers, {len(_shopper_ids(test_ev))} "
          f"test shoppers ({int(labels.is_anomalous.sum())} with injected anomalies) in {out}")
    det = make_detector(args.model, model=ModelConfig(kind=args.model),
                        train=TrainConfig(epochs=args.epochs, seed=args.seed), progress=not args.quiet)
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
    from simulation.run import SimulationConfig, prepare_flwr_run, simulate

    if args.data is None and (args.format != "taobao" or args.mapping or args.quarantine):
        raise ConfigError("--format, --mapping and --quarantine are only used with --data")
    if not args.dp and args.epsilon is not None:
        raise ConfigError("--epsilon is a budget of DP training: it cannot go with --no-dp")
    if not args.dp and args.dp_seed is not None:
        raise ConfigError("--dp-seed seeds DP training: it cannot go with --no-dp")
    fmt = event_format(args)
    distinct_outputs(data=args.data, quarantine=args.quarantine)
    cfg = SimulationConfig(
        out=Path(args.out), data=Path(args.data) if args.data else None, fmt=fmt,
        quarantine=Path(args.quarantine) if args.quarantine else None,
        shoppers=args.shoppers, sites=args.sites,
        partition=args.partition or ("natural" if args.data is None else "iid"),
        alpha=args.alpha, rounds=args.rounds, local_epochs=args.local_epochs, model=args.model,
        strategy=args.strategy, dp=args.dp, epsilon=8.0 if args.epsilon is None else args.epsilon,
        baselines=not args.no_baselines, history_copy=not args.no_history_copy,
        seed=args.seed, dp_seed=args.dp_seed, privacy_mode=args.privacy_mode,
        central_noise_multiplier=args.central_noise, central_clipping_norm=args.central_clip,
        central_epsilon=args.central_epsilon)
    if args.prepare_only:
        path = prepare_flwr_run(cfg)
        print(f"{cfg.sites} sites written under {cfg.out / 'sites'}; run config: {path}")
        print("run them with Flower's simulation runtime (README, 'flwr run'):")
        print("  flower-superlink --insecure --simulation --port 39591    # loopback only")
        print(f"  flwr run . seqanom-sim --run-config {path} "
              f"--federation-config 'num-supernodes={cfg.sites}' --stream")
        return 0
    metrics = simulate(cfg)
    if (metrics.get("ingest") or {}).get("summary"):
        print(metrics["ingest"]["summary"])
    ev = metrics.get("evaluation", {})
    print(f"simulation finished in {metrics['seconds']:.0f} s; report: {cfg.out / 'report.md'}")
    for name, m in ev.items():
        eps = metrics.get("methods", {}).get(name, {}).get("epsilon")
        eps_txt = f", epsilon {eps:.2f}" if isinstance(eps, (int, float)) else ""
        fa = m.get("false_alert_rate")
        fa_txt = f"  normal flagged {fa:6.1%}" if isinstance(fa, (int, float)) else " " * 22
        print(f"  {name:24s} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}{fa_txt}{eps_txt}"
              .rstrip())
    priv = metrics.get("privacy", {})
    print(f"privacy mode: {priv.get('mode', 'local')}")
    for g in priv.get("guarantees", []):
        scope = "worst site" if g["level"] == "shopper" else "whole federation"
        print(f"  ({g['epsilon']:.2f}, {g['delta']:.1e})-DP for {g['protects']} ({scope}), "
              f"over {priv['rounds']} rounds; accounted by {g['accounted_by'].split(':')[0]}")
    if not priv.get("guarantees"):
        print("  no differential privacy (no epsilon is claimed)")
    saw = priv.get("server_saw_individual_updates", True)
    print("  the server saw each site's update" if saw else
          "  the server saw only the sum of the sites' updates (SecAgg+)")
    if metrics.get("stop_reason"):
        print(f"stopped early (planned): {metrics['stop_reason']}")
    print(f"global model: {cfg.out / 'model'} (seqanom score --model accepts it)")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    """Show a site's privacy ledger: epsilon spent per run and in total, delta, budget, and what
    remains (a ledger written by the federation, or a 'train --ledger' accountant file)."""
    from seqanom_core.privacy import AccountantState
    from seqanom_core.privacy_ledger import PrivacyLedger

    try:
        data = json.loads(Path(args.path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{args.path}: cannot read privacy ledger: {err}") from err
    accountant_file = isinstance(data, dict) and "version" not in data and "history" in data
    if accountant_file:
        try:  # seqanom train --ledger
            ledger = PrivacyLedger(state=AccountantState.from_dict(data))
        except ConfigError as err:
            raise ConfigError(f"{args.path}: {err}") from err
    else:
        ledger = PrivacyLedger.load(args.path)
    s = ledger.summary()
    if args.json:
        print(json.dumps({"path": str(args.path), **s}, indent=2))
        return 0
    delta = "not fixed yet (nothing spent)" if s["delta"] is None else f"{s['delta']:.1e}"
    budget = "none" if s["budget"] is None else f"{s['budget']:.3f}"
    if accountant_file:  # it holds no budget: each 'train --dp --epsilon E' call gives one
        budget = "not stored (each 'seqanom train --dp --epsilon E' call sets it)"
    remaining = "-" if s["remaining"] is None else f"{s['remaining']:.3f}"
    print(f"privacy ledger {args.path}" + (f" (site {s['site']})" if s["site"] else ""))
    print(f"  protects: {s['unit']}; accountant: {s['accountant']} over {s['steps']} DP-SGD steps")
    print(f"  delta {delta}; budget {budget}; epsilon spent {s['epsilon_spent']:.3f}; "
          f"remaining {remaining}")
    if s["runs"]:
        print(f"  {'run':24s} {'rounds':>9s} {'eps added':>10s} {'eps alone':>10s}  last release")
        for r in s["runs"]:
            rounds = ",".join(str(x) for x in r["rounds"]) or "-"
            print(f"  {r['run'] or '(no run id)':24s} {rounds:>9s} {r['epsilon_added']:10.3f} "
                  f"{r['epsilon_alone']:10.3f}  {r['last'] or '-'}")
        print("  'eps added' is each run's increase of the cumulative epsilon (they sum to the "
              "total); 'eps alone' accounts the run's releases by themselves.")
    elif s["steps"]:
        print("  (no per-run entries: an accountant file from 'seqanom train --ledger')")
    return 0


# --------------------------------------------------------------------------- parser
class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (naming the command and the option)
    and exit status 2, like every other error of the command; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit 2."""
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (``--help`` on every command is complete)."""
    parser = OneLineParser(
        prog="seqanom",
        description="Privacy-preserving anomaly detection on e-commerce shopper event sequences.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=fn.__doc__)
        p.set_defaults(func=fn)
        return p

    p = add("train", cmd_train, "train a detector and write a model directory")
    add_input_args(p)
    p.add_argument("--model", choices=["transformer", "lstm"], default="transformer")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64,
                   help="(expected) batch size; with --dp, shoppers are Poisson-sampled")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: 5%% linear warm-up, then cosine decay to 10%% of --lr")
    p.add_argument("--alert-rate", type=float, default=0.05,
                   help="target fraction of normal shoppers flagged (threshold calibration)")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="fraction of shoppers held out of training to standardise scores and "
                        "set the threshold (more gives a steadier alert rate on very regular "
                        "logs)")
    p.add_argument("--max-len", type=int, default=128, help="window length seen by the model")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--category-buckets", type=int, default=64)
    p.add_argument("--session-gap", type=float, default=1800.0, metavar="SECONDS",
                   help="a gap longer than this starts a new session")
    p.add_argument("--dp", action="store_true",
                   help="train with Opacus DP-SGD (one shopper = one example)")
    p.add_argument("--epsilon", type=float, help="with --dp: privacy budget (cumulative with --ledger)")
    p.add_argument("--delta", type=float, help="with --dp: delta (default min(1e-5, 1/(10 n)))")
    p.add_argument("--noise-multiplier", type=float, help="with --dp: fixed noise instead of --epsilon")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="with --dp: per-shopper clip")
    p.add_argument("--dp-seed", type=seed_int, metavar="N",
                   help="with --dp: seed DP-SGD's sampling and noise (reproducible runs; whoever "
                        "knows N can remove the noise). Default: seeded from the OS, secret")
    p.add_argument("--ledger", metavar="PATH",
                   help="with --dp: accountant state to continue from and update (epsilon accumulates)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")

    p = add("score", cmd_score, "score shoppers with a model directory")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    add_input_args(p)
    p.add_argument("--out", required=True, metavar="SCORES.csv",
                   help="one row per shopper: user_id,score,flagged,driver,top_events")
    p.add_argument("--labels", metavar="LABELS.csv",
                   help="optional user_id,is_anomalous[,kind]: print AUROC/AUPRC/recall per kind")
    p.add_argument("--metrics-out", metavar="JSON", help="with --labels: write all metrics as JSON")
    p.add_argument("--top-k", type=int, default=3, help="events named per explanation")
    p.add_argument("--explain-all", action="store_true",
                   help="explain every shopper, not only the flagged ones")
    p.add_argument("--device", default="auto")

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
    p.add_argument("--model", choices=["transformer", "lstm"], default="transformer")
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
    p.add_argument("--model", choices=["transformer", "lstm"], default="transformer")
    p.add_argument("--strategy", default="fedavg",
                   choices=["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
    p.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                   help="DP-SGD at every site (one shopper = one example)")
    p.add_argument("--epsilon", type=float, help="per-site privacy budget (default 8)")
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
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    p.add_argument("--no-history-copy", action="store_true",
                   help="train the federation and the baselines without the model's copy term "
                        "from each shopper's own history (README, How it works)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the sites and RUN_DIR/run-config.toml, for 'flwr run'")
    p.add_argument("--out", default="runs/simulate", metavar="RUN_DIR")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="partition, injection, initial model, shuffles (not DP noise: --dp-seed)")
    p.add_argument("--dp-seed", type=seed_int, metavar="N",
                   help="seed the sites' and baselines' DP sampling and noise (every site and "
                        "round its own): a reproducible run whose noise anyone with N can remove. "
                        "Default: seeded from the OS, secret, so runs differ a little")

    p = add("ledger", cmd_ledger, "show a site's privacy ledger (epsilon per run, total, budget)")
    p.add_argument("path", metavar="LEDGER.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    # deployment: the central team's and the sites' commands (they build Flower command lines)
    from client.deploy_cli import add_site_commands
    from server.deploy_cli import add_central_commands

    add_central_commands(add)
    add_site_commands(add)
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to the console at INFO (``--verbose``) or WARNING, unless the process already has
    root handlers (embedding, tests): then like ``logging.basicConfig``, leave them alone.

    The ingest summary is not logged: the commands print it. The handler's own level matters:
    records of loggers that set a lower level themselves (Flower's ``flwr`` logs at DEBUG) pass
    the root logger's level and would be printed; and Flower prints its INFO lines through its
    own handler, so ``flwr`` does not propagate here."""
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root.addHandler(handler)
    logging.getLogger("flwr").propagate = False
    # every command that reads events prints the ingest summary itself (stdout)
    logging.getLogger("seqanom_core.ingest.summary").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seqanom`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except SeqanomError as err:
        print(f"seqanom {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # a path we cannot read or write: name it
        where = f"{err.filename}: " if err.filename else ""
        print(f"seqanom {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a case the checks above missed: one line, traceback on request
        if args.verbose:
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else ""
        print(f"seqanom {args.command}: internal error: {type(err).__name__}: {first} "
              "(run again with --verbose for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def console_main() -> None:
    """The ``seqanom`` console command: ``main``, then exit with its status.

    An error exit leaves the process at once after flushing the console (``os._exit``): an
    error can interrupt a multi-threaded Arrow read, and the interpreter's teardown of Arrow's
    thread pool then sometimes aborts the process ("terminate called without an active
    exception", status 134 instead of 2). Every file this command writes is closed by then; a
    Ray runtime a failed simulation left running is shut down first (``os._exit`` skips the
    atexit hook that would otherwise stop it)."""
    code = main()
    if code:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
