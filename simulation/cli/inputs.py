"""Input options and readers the commands share: seeds, model kinds, event files, labels."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqanom_core.config import ModelConfig, Source
from seqanom_core.errors import ConfigError


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


class ModelKinds:
    """The registered model kinds as argparse choices, read from the backbone registry when the
    option is parsed or its help shown (the registry imports torch; building the parser must not)."""

    def __iter__(self) -> Iterator[str]:
        from seqanom_core.models.registry import backbone_kinds

        return iter(backbone_kinds())

    def __contains__(self, kind: object) -> bool:
        return kind in tuple(self)


def add_model_kind_arg(p: argparse.ArgumentParser) -> None:
    """``--model KIND``: a registered model kind (the backbone registry's choices)."""
    action = p.add_argument("--model", default=ModelConfig.kind)
    action.choices = ModelKinds()  # after add_argument, which lists a parser's choices at once


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

    if args.format == Source.TOKENS:
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

    if args.format == Source.TOKENS:
        toks, report = read_token_sequences(args.data, quarantine_path=args.quarantine)
        return sequences_from_tokens(toks.ids, toks.tokens, tokenizer), None, report
    events, report = read_event_input(args)
    return build_sequences(events, tokenizer), events, report


def shopper_ids(events: Any) -> Any:
    """Distinct shopper ids of an events table."""
    import pyarrow.compute as pc

    return pc.unique(events.column("user_id"))
