"""The detector commands of a site: ``train``, ``score``, ``ledger``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqanom_core.config import (
    ITEM_STATES,
    MAX_NOISE,
    SESSION_GAP_S,
    Source,
    TokenizerConfig,
    is_positive_number,
)
from seqanom_core.errors import ConfigError
from seqanom_core.labels import align_labels, read_labels
from seqanom_core.privacy import guarantee_text
from simulation.cli.inputs import (
    add_input_args,
    add_model_kind_arg,
    check_input_file,
    check_paths,
    load_input,
    open_shards,
    seed_int,
)
from simulation.cli.pretrain_command import add_init_args, init_configs

log = logging.getLogger("seqanom")


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector on normal-looking shoppers and save its model directory.

    With ``--dp --ledger``: the ledger is locked from opening to the recorded spend, and the
    spend is written (durably) before the model directory is: a model never leaves without
    its spend in the ledger."""
    from seqanom_core.detector import make_detector
    from seqanom_core.ledger_integrity import ledger_lock
    from seqanom_core.privacy_ledger import PrivacyLedger

    tok, model, train = training_configs(args)
    init, tok, model, train = init_configs(args, tok, model, train)
    if bool(args.data) == bool(args.shards):
        raise ConfigError("train reads --data FILE or --shards DIR (from seqanom tokenize), "
                          "exactly one of them")
    # the model directory is replaced whole; the ledger is read and then updated
    if args.labels and train.dp is not None:
        raise ConfigError("--labels goes without --dp: the supervised head's training is not "
                          "differentially private yet")
    check_paths({"data": args.data, "ledger": args.ledger, "labels": args.labels,
                 "init": args.init},
                {"out": args.out, "quarantine": args.quarantine, "ledger": args.ledger},
                dirs=["out", "init"], replaced={"out": [args.out]})
    if args.ledger and train.dp is None:
        raise ConfigError("--ledger records what DP-SGD spends: it goes with --dp (without it "
                          "this training would record nothing there)")
    keep = bool(args.ledger) and train.dp is not None
    if (args.site or args.new_ledger) and not keep:
        raise ConfigError("--site and --new-ledger go with --dp --ledger")
    if keep and not args.site:
        raise ConfigError("--ledger needs --site NAME (the site the ledger belongs to)")
    with ledger_lock(args.ledger) if keep else contextlib.nullcontext():
        ledger = None
        if keep:  # the ledger's budget, or a lower --epsilon, bounds this call: fixed noise too
            ledger = PrivacyLedger.open(args.ledger, budget=train.dp.epsilon, site=args.site,
                                        accountant=train.dp.accountant,
                                        new_ledger=args.new_ledger)
            train = dataclasses.replace(train, dp=dataclasses.replace(train.dp,
                                                                      epsilon=ledger.limit()))
        if args.shards:  # tokenised shards (seqanom tokenize): trained window by window
            seqs, tok = open_shards(args.shards)
        else:
            seqs, _, report = load_input(args, tok)
            print(report.summary())
        # too little budget left (more noise than --max-noise needed), or a given noise above
        # it or over the budget: fit raises PrivacyBudgetExceeded before anything is written
        det = make_detector(model.kind, model_config=model, tokenizer_config=tok,
                            train_config=train, progress=not args.quiet)
        t0 = time.time()
        det.fit(seqs, accountant_state=None if ledger is None else ledger.state,
                labels=args.labels, init=init, pool_categories=not args.keep_categories)
        result = det.train_result_
        if ledger is not None and result.accountant_state is not None:
            ledger.record(result.accountant_state, run="", kind="model-update",
                          command="seqanom train", noise_multiplier=result.noise_multiplier,
                          steps=result.steps)
            ledger.save(args.ledger)  # before the model directory: the safe side
    out = det.save(args.out)
    meta = det.metadata_
    print(f"trained {model.kind} on {meta['n_train_shoppers']} shoppers "
          f"({meta['n_train_events']} events), calibrated on {meta['n_calibration_shoppers']} "
          f"held-out shoppers, {time.time() - t0:.1f} s; final loss {meta['epoch_losses'][-1]:.3f}")
    if "supervised_head" in meta:
        h = meta["supervised_head"]
        print(f"supervised head on {h['n_labelled_anomalous']} labelled anomalous and "
              f"{h['n_labelled_normal']} labelled normal shoppers of {args.labels} (not DP)")
    print(f"threshold {det.threshold_:.3f} for a target alert rate of {args.alert_rate:.1%}")
    print(privacy_line(meta["privacy"]))
    print(f"model written to {out}")
    return 0


def training_configs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(tokenizer, model, training) configs from the options of ``add_training_args``: what
    ``train`` fits, and what ``audit`` trains with."""
    from seqanom_core.config import DPConfig, ModelConfig, TrainConfig

    tok = TokenizerConfig(category_buckets=args.category_buckets, session_gap_s=args.session_gap,
                          item_states=args.item_states)
    dp = None
    if args.dp:
        if args.epsilon is None and args.noise_multiplier is None:
            raise ConfigError("--dp needs --epsilon (a budget) or --noise-multiplier")
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
    if getattr(det, "head_", None) is not None:
        h = det.head_.info
        print(f"scores of the supervised head ({h.get('n_labelled_anomalous')} labelled "
              f"anomalous, {h.get('n_labelled_normal')} labelled normal training shoppers)")
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
        low = rep["recall_at_fpr"]
        print("  recall at a false-positive rate of "
              + ", ".join(f"{k}: {v:.3f}" for k, v in low.items()))
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
    remains; or raise its budget (an entry of its own), or convert an old-format ledger."""
    from seqanom_core.ledger_integrity import ledger_lock
    from seqanom_core.ledger_migration import migrate_ledger
    from seqanom_core.privacy_ledger import PrivacyLedger

    check_input_file(args.path)
    if (args.site or args.budget is not None) and not args.migrate:
        raise ConfigError("--site and --budget go with --migrate")
    if args.migrate and args.raise_budget is not None:
        raise ConfigError("--migrate and --raise-budget are separate commands")
    for option, value in (("--raise-budget", args.raise_budget), ("--budget", args.budget)):
        if value is not None and not is_positive_number(value):
            raise ConfigError(f"{option} must be a positive number of epsilon, not {value}")
    if args.migrate or args.raise_budget is not None:
        with ledger_lock(args.path):
            if args.migrate:
                try:
                    old = json.loads(Path(args.path).read_text())
                    ledger = migrate_ledger(old, site=args.site or "", budget=args.budget)
                except (OSError, ValueError, KeyError, TypeError) as err:
                    raise ConfigError(f"{args.path}: cannot migrate privacy ledger: {err}") from err
                backup = Path(f"{args.path}.old")
                backup.write_bytes(Path(args.path).read_bytes())
                ledger.save(args.path)
                print(f"{args.path}: migrated to a chained ledger of site {ledger.site!r}, "
                      f"budget {ledger.budget:g} (the old file is kept as {backup})")
            else:
                ledger = PrivacyLedger.load(args.path)
                before = ledger.budget
                try:
                    ledger.raise_budget(args.raise_budget, command="seqanom ledger --raise-budget")
                except ConfigError as err:
                    raise ConfigError(f"{args.path}: {err}") from err
                ledger.save(args.path)
                print(f"{args.path}: budget of site {ledger.site!r} raised from {before} to "
                      f"{ledger.budget:g} (recorded as entry {len(ledger.entries) - 1})")
        return 0
    ledger = PrivacyLedger.load(args.path)
    s = ledger.summary()
    if args.json:
        print(json.dumps({"path": str(args.path), **s}, indent=2))
        return 0
    delta = "not fixed yet (nothing spent)" if s["delta"] is None else f"{s['delta']:.1e}"
    budget = "none" if s["budget"] is None else f"{s['budget']:.3f}"
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
    p.add_argument("--item-states", choices=ITEM_STATES, default=TokenizerConfig.item_states,
                   help="what the item token tells: basic (new, same as the previous event, "
                        "seen earlier) or funnel (also the furthest funnel stage already "
                        f"reached on a seen item; default {TokenizerConfig.item_states})")
    p.add_argument("--dp", action="store_true",
                   help="train with Opacus DP-SGD (one shopper = one example)")
    p.add_argument("--epsilon", type=float,
                   help="with --dp: privacy budget (cumulative with --ledger: a new ledger keeps "
                        "it, an existing one refuses a higher one, a lower one caps this call)")
    p.add_argument("--delta", type=float, help="with --dp: delta (default min(1e-5, 1/(10 n)))")
    p.add_argument("--noise-multiplier", type=float,
                   help="with --dp: fixed noise instead of a planned one; still refused above "
                        "--max-noise or over the budget (--epsilon, or the --ledger's)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="with --dp: per-shopper clip")
    p.add_argument("--accountant", choices=["rdp", "prv"],
                   help="with --dp: Opacus accountant, rdp (default) or prv (tighter: less noise "
                        "for the same epsilon); a --ledger keeps the one it was written with")
    p.add_argument("--max-noise", type=float, metavar="Z",
                   help=f"with --dp: refuse to train (exit 2, nothing written) when the "
                        f"budget left would need (or --noise-multiplier gives) a noise above Z (default "
                        f"{MAX_NOISE:g}, as a federated site declines a round)")
    p.add_argument("--dp-seed", type=seed_int, metavar="N",
                   help="with --dp: seed DP-SGD's sampling and noise (reproducible runs; whoever "
                        "knows N can remove the noise). Default: seeded from the OS, secret")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def add_detector_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register train / score / ledger with the seqanom parser's ``add``."""
    p = add("train", cmd_train, "train a detector and write a model directory")
    add_input_args(p, required=False)
    p.add_argument("--shards", metavar="DIR",
                   help="train on tokenised shards written by 'seqanom tokenize' instead of "
                        "--data (read window by window; whole shards held out for the threshold)")
    add_model_kind_arg(p)
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    add_training_args(p)
    add_init_args(p)
    p.add_argument("--ledger", metavar="PATH",
                   help="with --dp: the site's privacy ledger to continue and update (epsilon "
                        "accumulates; locked while training; the spend is written before the model)")
    p.add_argument("--site", metavar="NAME",
                   help="with --ledger: the site it belongs to (another site's ledger is refused)")
    p.add_argument("--labels", metavar="LABELS.csv",
                   help="user_id,is_anomalous[,kind] of some training shoppers (as 'inject' "
                        "writes): also fit a supervised head on them (semi-supervised: "
                        "unlabelled shoppers are not taken as normal); not with --dp")
    p.add_argument("--new-ledger", action="store_true",
                   help="with --ledger: start a new ledger where this site kept one that is now "
                        "missing (refused otherwise)")

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
    p.add_argument("--raise-budget", type=float, metavar="EPS",
                   help="raise the ledger's epsilon budget to EPS (recorded as an entry)")
    p.add_argument("--migrate", action="store_true",
                   help="convert an old-format ledger (version 1, or an accountant file of the "
                        "old 'train --ledger') to a chained one; needs --site (and --budget)")
    p.add_argument("--site", metavar="NAME", help="with --migrate: the site the ledger belongs to")
    p.add_argument("--budget", type=float, metavar="EPS",
                   help="with --migrate: the ledger's epsilon budget")

