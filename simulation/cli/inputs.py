"""Input options, readers and path checks the commands share: seeds, model kinds, event files,
labels, and the rule that no output is, or lies inside, an input."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from seqanom_core.config import ModelConfig, Source
from seqanom_core.errors import ConfigError

# --------------------------------------------------------------------------- input helpers
SEED_MAX = 2**32 - 1  # torch.manual_seed overflows past 2**64, and seeds are offset per site


def seed_int(text: str) -> int:
    """argparse type of --seed: an integer 0..SEED_MAX (NumPy rejects negative seeds, torch
    larger than 64 bits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX}, not {value}")
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


PathArg = str | Path | None


def option_flag(option: str) -> str:
    """``metrics_out`` -> ``--metrics-out`` (a flag stays as it is; "", a positional argument,
    stays "")."""
    if not option or option.startswith("-"):
        return option
    return "--" + option.replace("_", "-")


def _named(option: str, path: str | Path) -> str:
    """``--option PATH`` (``PATH`` for a positional argument) at the start of an error."""
    return f"{option_flag(option)} {path}".lstrip()


def _real_paths(option: str, path: str | Path, want: str = "a regular file"
                ) -> tuple[Path, Path]:
    """(the path with every symlink resolved, the path with only its parent resolved: where a
    link itself lies); a symlink loop or a FIFO, socket or device is a ConfigError (``want``
    says what the option expects)."""
    from seqanom_core.ingest.files import special_file

    p = Path(path).expanduser()
    kind = special_file(p)
    try:
        real, link = p.resolve(), p.absolute().parent.resolve() / p.name
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a loop
        kind = "a symlink loop"
    if kind == "a symlink loop":
        raise ConfigError(f"{_named(option, path)}: is a symlink loop (it never reaches a file)")
    if kind not in (None, "a directory"):  # opening one would block or never end
        raise ConfigError(f"{_named(option, path)}: is {kind}, not {want}")
    return real, link


def _inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies under it (both absolute)."""
    return path == other or path.is_relative_to(other)


def check_paths(inputs: Mapping[str, PathArg], outputs: Mapping[str, PathArg], *,
                dirs: Iterable[str] = (),
                replaced: Mapping[str, Iterable[str | Path]] | None = None) -> None:
    """Refuse the paths of a command before it reads or writes anything, with a one-line
    ConfigError naming the options and the path:

    - an empty path (``Path("")`` would be the working directory); a symlink loop; a FIFO, socket or device (opening one waits forever or never ends); a
      directory where a file is expected, or a file where ``dirs`` expects a directory;
    - an output that is, or lies inside, an input (symlinks resolved);
    - two outputs that name the same path;
    - an input, or another output, inside a directory the command deletes or replaces whole.

    ``inputs`` and ``outputs`` map option names (``metrics_out`` for ``--metrics-out``) to paths
    (None: not given); an option in both (a ledger updated in place) is not compared with
    itself. ``dirs`` names the options that are directories; ``replaced`` maps an output
    option to the directories it removes or replaces (``train --out``; an earlier simulation's
    outputs under ``simulate --out``)."""
    given = {o: p for o, p in [*inputs.items(), *outputs.items()] if p is not None}
    real: dict[str, tuple[Path, Path]] = {}
    for option, path in given.items():
        if not str(path):  # Path("") is the working directory: never what was meant
            raise ConfigError(f"{_named(option, repr(''))}: an empty path")
        real[option] = _real_paths(option, path,
                                   "a directory" if option in dirs else "a regular file")
        p = Path(path).expanduser()
        if option in dirs and p.exists() and not p.is_dir():
            raise ConfigError(f"{_named(option, path)}: is a file, not a directory")
        if option not in dirs and p.is_dir():
            raise ConfigError(f"{_named(option, path)}: is a directory, not a file")
    ins = [o for o in inputs if o in real]
    outs = [o for o in outputs if o in real]
    for k, out in enumerate(outs):
        fo, (ro, _) = option_flag(out), real[out]
        for other in outs[:k]:
            if real[other][0] == ro:
                raise ConfigError(f"{option_flag(other)} and {fo} both name {ro}; give them "
                                  "different files")
        for inp in ins:
            fi, (ri, _) = option_flag(inp), real[inp]
            if inp == out:
                continue
            if ro == ri:
                raise ConfigError(f"{fi} and {fo} both name {ro}: an output must not overwrite "
                                  "an input; give them different files")
            if _inside(ro, ri):
                raise ConfigError(f"{fo} {given[out]} lies inside {fi} {given[inp]}: an output "
                                  "must not write into an input; give a path outside it")
    for out, dirs_replaced in (replaced or {}).items():
        if out not in real:
            continue
        fo = option_flag(out)
        for d in dirs_replaced:
            rd = _real_paths(out, d)
            for other in given:
                if other == out:
                    continue
                if any(_inside(p, r) for p in real[other] for r in rd):
                    raise ConfigError(
                        f"{option_flag(other)} {given[other]} lies inside {d}, which {fo} "
                        f"{given[out]} replaces (it would be deleted); move it or give another "
                        f"{fo}")


def check_input_file(path: str | Path, option: str = "") -> None:
    """Refuse an input file that cannot be read as one: a symlink loop, a FIFO, socket or
    device, or a directory (a missing file is left to the reader, which names it); ``option``
    names it in the error ("": a positional argument)."""
    check_paths({option: path}, {})


def add_input_args(p: argparse.ArgumentParser, required: bool = True, tokens: bool = True,
                   several: bool = False) -> None:
    """--data / --format / --mapping / --quarantine (``tokens``: the command reads token files;
    ``several``: --data may be given more than once, a list)."""
    from seqanom_core.formats import list_formats

    p.add_argument("--data", required=required, metavar="PATH",
                   action="append" if several else "store",
                   help="events file: .csv, .csv.gz or .parquet"
                   + (" (or .txt for --format tokens)" if tokens else "")
                   + ("; give --data again for more files" if several else ""))
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
    if "=" in args.format:  # an inline mapping, as read_events takes it: errors name --format
        try:
            return parse_mapping(args.format)
        except ConfigError as err:
            raise ConfigError(f"--format {args.format}: {err}") from err
    return args.format


def require_data(path: str | Path) -> None:
    """A missing --data file is an error naming the option (the reader names only the path,
    which says nothing when it is blank)."""
    if not Path(path).expanduser().exists():
        raise ConfigError(f"--data {path}: no such file")


def read_event_input(args: argparse.Namespace) -> tuple[Any, Any]:
    """Read --data (--format, --mapping, --quarantine) as an events table: (table, report)."""
    from seqanom_core.ingest import read_nonempty_events

    require_data(args.data)
    return read_nonempty_events(args.data, event_format(args), quarantine_path=args.quarantine)


def load_input(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, Any, Any]:
    """Read --data: returns (SequenceSet, events table or None, ingest report)."""
    from seqanom_core.ingest import read_token_sequences
    from seqanom_core.sequences import build_sequences, sequences_from_tokens

    if args.format == Source.TOKENS:
        require_data(args.data)
        toks, report = read_token_sequences(args.data, quarantine_path=args.quarantine)
        return sequences_from_tokens(toks.ids, toks.tokens, tokenizer), None, report
    events, report = read_event_input(args)
    return build_sequences(events, tokenizer), events, report


def shopper_ids(events: Any) -> Any:
    """Distinct shopper ids of an events table."""
    import pyarrow.compute as pc

    return pc.unique(events.column("user_id"))


def open_shards(directory: str) -> tuple[Any, Any]:
    """``--shards DIR``: the memory-mapped shards and their tokenizer; prints what they hold."""
    from seqanom_core.ingest.shards import ShardedSequences, shard_tokenizer

    if not Path(directory).expanduser().is_dir():
        raise ConfigError(f"--shards {directory}: no such directory")
    seqs = ShardedSequences.open(directory)
    print(f"{directory}: {len(seqs.shards)} shards, {len(seqs):,} shoppers, "
          f"{seqs.n_events:,} events (tokenised; the tokenizer is theirs)")
    return seqs, shard_tokenizer(directory)
