"""The detector commands of a site: ``train``, ``score``, ``ledger``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqanom_core.config import MAX_NOISE, SESSION_GAP_S, Source
from seqanom_core.errors import ConfigError
from seqanom_core.labels import align_labels, read_labels
from seqanom_core.privacy import guarantee_text
from simulation.cli.inputs import (
    add_input_args,
    add_model_kind_arg,
    check_input_file,
    check_paths,
    load_input,
    seed_int,
)

log = logging.getLogger("seqanom")


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector on normal-looking shoppers and save its model directory."""
    from seqanom_core.detector import make_detector
    from seqanom_core.privacy import AccountantState

    tok, model, train = training_configs(args)
    # the model directory is replaced whole; the ledger is read and then updated
    check_paths({"data": args.data, "ledger": args.ledger},
                {"out": args.out, "quarantine": args.quarantine, "ledger": args.ledger},
                dirs=["out"], replaced={"out": [args.out]})
    prior = AccountantState.load(args.ledger) if args.ledger and Path(args.ledger).exists() else None
    if prior is not None and train.dp is not None:  # never continued under another accountant
        prior.require(train.dp.accountant, f"accountant state {args.ledger}")
    seqs, _, report = load_input(args, tok)
    print(report.summary())
    # too little budget left (more noise than --max-noise needed): fit raises
    # PrivacyBudgetExceeded before anything is written, the ledger and --out untouched
    det = make_detector(args.model, model_config=model, tokenizer_config=tok, train_config=train,
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


def training_configs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(tokenizer, model, training) configs from the options of ``add_training_args``: what
    ``train`` fits, and what ``audit`` trains with."""
    from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig, TrainConfig

    tok = TokenizerConfig(category_buckets=args.category_buckets, session_gap_s=args.session_gap)
    dp = None
    if args.dp:
        if args.epsilon is None and args.noise_multiplier is None:
            raise ConfigError("--dp needs --epsilon (a budget) or --noise-multiplier")
        if args.max_noise is not None and args.epsilon is None:
            raise ConfigError("--max-noise bounds the noise an --epsilon budget may need")
        dp = DPConfig(epsilon=args.epsilon, delta=args.delta, noise_multiplier=args.noise_multiplier,
                      max_grad_norm=args.max_grad_norm, seed=args.dp_seed,
                      accountant=args.accountant or "rdp",
                      max_noise=MAX_NOISE if args.max_noise is None else args.max_noise)
    else:
        given = [f"--{name.replace('_', '-')}" for name in ("epsilon", "noise_multiplier",
                                                           "dp_seed", "accountant", "max_noise")
                 if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{'/'.join(given)} need --dp")
    model = ModelConfig(kind=args.model, d_model=args.d_model, n_layers=args.layers,
                        max_len=args.max_len)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        lr_schedule=args.lr_schedule, calibration_fraction=args.calibration_fraction,
                        alert_rate=args.alert_rate, seed=args.seed, device=args.device, dp=dp)
    return tok, model, train


def privacy_line(p: dict[str, Any]) -> str:
    """One exact sentence about the privacy of a model's weights."""
    if not p.get("dp"):
        return "privacy: none (trained without differential privacy)"
    return (f"privacy: {guarantee_text(p['epsilon'], p['delta'], p['unit'])}; "
            f"{p['accountant']}; noise multiplier {p['noise_multiplier']:.3f}, "
            f"clip {p['max_grad_norm']}"
            + (f"; sampling and noise {p['randomness']}" if p.get("randomness") else "")
            + (f"; calibration: {p['calibration']}" if p.get("calibration") else ""))


def cmd_score(args: argparse.Namespace) -> int:
    """Score every shopper with a saved model; write user_id,score,flagged + explanations."""
    import pandas as pd

    from seqanom_core.detector import SequenceDetector
    from seqanom_core.metrics import detection_report

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be 1 or more, not {args.top_k}")
    if args.metrics_out and not args.labels:
        raise ConfigError("--metrics-out needs --labels (the metrics compare scores with labels)")
    check_paths({"model": args.model, "data": args.data, "labels": args.labels},
                {"out": args.out, "metrics_out": args.metrics_out, "quarantine": args.quarantine},
                dirs=["model"])
    det = SequenceDetector.load(args.model, device=args.device, progress=not args.quiet)
    if (det.source_ == Source.TOKENS) != (args.format == Source.TOKENS):
        raise ConfigError(f"{args.model} was trained on '{det.source_}' input; "
                          f"--format {args.format} does not match")
    seqs, events, report = load_input(args, det.tokenizer_config)
    print(report.summary())
    scored = det.score_shoppers(seqs)
    flagged = det.flag(scored.scores)
    explanations = []
    for i in range(len(scored.ids)):
        if flagged[i] or args.explain_all:
            ex = det.explain(scored, i, events, top_k=args.top_k)
            explanations.append((ex["driver_text"], " | ".join(_event_text(e) for e in ex["events"])))
        else:
            explanations.append(("", ""))
    df = pd.DataFrame({
        # scores as computed: a rounded score equal to the threshold could look flagged
        "user_id": scored.ids, "score": scored.scores, "flagged": flagged,
        "driver": [e[0] for e in explanations], "top_events": [e[1] for e in explanations],
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"scored {len(df)} shoppers: {int(flagged.sum())} flagged "
          f"(alert rate {flagged.mean():.2%} at threshold {det.threshold_:.3f}, "
          f"calibrated for {det.metadata_.get('alert_rate', float('nan')):.1%}); wrote {args.out}")
    if args.labels:
        y, kinds = align_labels(scored.ids, read_labels(args.labels), str(args.labels))
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



def cmd_ledger(args: argparse.Namespace) -> int:
    """Show a site's privacy ledger: epsilon spent per run and in total, delta, budget, and what
    remains (a ledger written by the federation, or a 'train --ledger' accountant file)."""
    from seqanom_core.privacy import AccountantState
    from seqanom_core.privacy_ledger import PrivacyLedger

    check_input_file(args.path)
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
    print(f"  protects: {s['unit']}; accountant: {s['accountant']} over {s['steps']} steps "
          "(DP-SGD steps and Gaussian releases)")
    print(f"  delta {delta}; budget {budget}; epsilon spent {s['epsilon_spent']:.3f}; "
          f"remaining {remaining}")
    if len(s.get("by_kind") or {}) > 1:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in s["by_kind"].items())
        print(f"  epsilon of each kind of release alone: {parts} (composed: the total above)")
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




def add_training_args(p: argparse.ArgumentParser) -> None:
    """The training options of ``train`` (model size, optimisation, DP, seed, device), which
    ``training_configs`` turns into configs."""
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
    p.add_argument("--session-gap", type=float, default=SESSION_GAP_S, metavar="SECONDS",
                   help="a gap longer than this starts a new session")
    p.add_argument("--dp", action="store_true",
                   help="train with Opacus DP-SGD (one shopper = one example)")
    p.add_argument("--epsilon", type=float, help="with --dp: privacy budget (cumulative with --ledger)")
    p.add_argument("--delta", type=float, help="with --dp: delta (default min(1e-5, 1/(10 n)))")
    p.add_argument("--noise-multiplier", type=float, help="with --dp: fixed noise instead of --epsilon")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="with --dp: per-shopper clip")
    p.add_argument("--accountant", choices=["rdp", "prv"],
                   help="with --dp: Opacus accountant, rdp (default) or prv (tighter: less noise "
                        "for the same epsilon); a --ledger keeps the one it was written with")
    p.add_argument("--max-noise", type=float, metavar="Z",
                   help=f"with --dp --epsilon: refuse to train (exit 2, nothing written) when the "
                        f"budget left would need a noise multiplier above Z (default "
                        f"{MAX_NOISE:g}, as a federated site declines a round)")
    p.add_argument("--dp-seed", type=seed_int, metavar="N",
                   help="with --dp: seed DP-SGD's sampling and noise (reproducible runs; whoever "
                        "knows N can remove the noise). Default: seeded from the OS, secret")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def add_detector_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register train / score / ledger with the seqanom parser's ``add``."""
    p = add("train", cmd_train, "train a detector and write a model directory")
    add_input_args(p)
    add_model_kind_arg(p)
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    add_training_args(p)
    p.add_argument("--ledger", metavar="PATH",
                   help="with --dp: accountant state to continue from and update (epsilon accumulates)")

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

    p = add("ledger", cmd_ledger, "show a site's privacy ledger (epsilon per run, total, budget)")
    p.add_argument("path", metavar="LEDGER.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

