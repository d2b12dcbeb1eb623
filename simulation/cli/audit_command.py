"""The ``audit`` command: an empirical privacy audit by membership inference on planted canaries
(``seqanom_core.audit``), trained exactly as ``train`` would with the same options."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqanom_core.errors import ConfigError
from simulation.cli.detector_commands import add_training_args, training_configs
from simulation.cli.inputs import add_input_args, add_model_kind_arg, check_paths

log = logging.getLogger("seqanom")

AUDIT_FILE = "audit.json"


def cmd_audit(args: argparse.Namespace) -> int:
    """Empirical privacy audit: plant canary shoppers (a random half in the training data), train
    as 'seqanom train' would with the same options, attack the canaries by their loss, and write
    the membership-inference AUC and the one-run epsilon lower bound (Steinke, Nasr & Jagielski
    2023) beside the accounted epsilon to OUT/audit.json. --seed also draws the canaries and which are trained on. Without
    --data: the built-in generator."""
    from seqanom_core.audit import AuditConfig, run_audit
    from seqanom_core.config import DetectorConfig

    tok, model, train = training_configs(args)
    audit = AuditConfig(canaries=args.canaries, canary_length=args.canary_length, seed=args.seed)
    out = Path(args.out)
    check_paths({"data": args.data}, {"quarantine": args.quarantine, "out": args.out},
                dirs=["out"])
    check_paths({"data": args.data}, {"quarantine": args.quarantine, "out": out / AUDIT_FILE})
    if args.data is None:
        if args.format != "seqanom" or args.mapping or args.quarantine:
            raise ConfigError("--format, --mapping and --quarantine are only used with --data")
        from simulation.synth import SynthConfig, synthesize_events

        events = synthesize_events(SynthConfig(n_shoppers=args.shoppers, n_sites=1, seed=args.seed))
        print(f"built-in data: {args.shoppers} synthetic shoppers ({events.num_rows} events)")
    else:
        from simulation.cli.inputs import read_event_input

        events, report = read_event_input(args)
        print(report.summary())
    record = run_audit(events, DetectorConfig(tok, model, train), audit, progress=not args.quiet)
    record["data"] = str(args.data) if args.data else f"built-in generator ({args.shoppers} shoppers)"
    out.mkdir(parents=True, exist_ok=True)
    path = out / AUDIT_FILE
    path.write_text(json.dumps(record, indent=2, allow_nan=False))
    for line in summary_lines(record):
        print(line)
    print(f"audit written to {path}")
    return 0


def summary_lines(r: dict[str, Any]) -> list[str]:
    """A few lines for people: the attack, the bound, the accounted epsilon."""
    b, c = r["bound"], r["canaries"]
    def num(x: float | None) -> str:
        return "undefined (every canary on one side)" if x is None else f"{x:.3f}"

    accounted = ("no DP: nothing accounted" if r["epsilon_accounted"] is None else
                 f"accounted epsilon {r['epsilon_accounted']:.3f} at delta {r['delta']:.1e}")
    return [
        f"audit of {r['model']} ({r['epochs']} epochs, {'DP-SGD' if r['dp'] else 'no DP'}): "
        f"{c['canaries']} canaries of {c['canary_length']} events, {c['members']} trained on, "
        f"beside {r['n_real_training_shoppers']} real training shoppers; {r['seconds']:.0f} s",
        f"  membership inference AUC {num(r['mia_auc'])} (mean loss: members "
        f"{num(r['mean_loss']['members'])}, others {num(r['mean_loss']['non_members'])})",
        f"  epsilon lower bound {r['epsilon_lower_bound']:.3f} at {b['confidence']:.0%} "
        + (f"confidence ({b['correct']} of {b['guesses']} guesses right); " if b["guesses"] else
           "confidence (no number of guesses rejected epsilon 0); ") + accounted,
    ]


def add_audit_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``audit`` with the seqanom parser's ``add``."""
    p = add("audit", cmd_audit, "empirical privacy audit: membership inference on canaries")
    add_input_args(p, required=False, tokens=False)
    add_model_kind_arg(p)
    p.add_argument("--out", default="runs/audit", metavar="DIR", help="writes DIR/audit.json")
    p.add_argument("--canaries", type=int, default=256,
                   help="synthetic canary shoppers planted; each trained on with probability 1/2")
    p.add_argument("--canary-length", type=int, default=32, metavar="EVENTS",
                   help="events per canary (random draws of the data's items, behaviours, gaps)")
    p.add_argument("--shoppers", type=int, default=600,
                   help="without --data: synthetic shoppers of the built-in generator")
    add_training_args(p)
