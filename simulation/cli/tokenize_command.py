"""``seqanom tokenize``: stream a large event file into tokenised shards (bounded memory)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from simulation.cli.inputs import add_input_args, check_paths, event_format, require_data


def _int_up_to(most: int) -> Callable[[str], int]:
    """argparse type: an integer from 1 to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not from 1 to {most}")
        return value

    return parse


def _batch_size(text: str) -> int:
    """argparse type of ``--batch-size``: bytes of text per record batch (e.g. 16M)."""
    from seqanom_core.errors import ConfigError
    from seqanom_core.ingest.memory_limit import parse_size

    try:
        value = parse_size(text, "--batch-size")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--batch-size: ")) from None
    if not 1 << 10 <= value <= 1 << 31:
        raise argparse.ArgumentTypeError(f"{text!r} is not from 1K to 2G")
    return value


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Read an event file in record batches, check every row (rejected rows are counted and,
    with --quarantine, written with their line), partition the events by shopper into shards
    on disk and tokenise each shard: memory is bounded by a batch and a shard, not by the
    file. The shards (``manifest.json``, one directory per shard) are read memory-mapped by
    ``seqanom_core.ingest.shards``."""
    from seqanom_core.config import TokenizerConfig
    from seqanom_core.ingest.streaming import BATCH_BYTES, stream_ingest

    require_data(args.data)
    check_paths({"data": args.data}, {"out": args.out, "quarantine": args.quarantine},
                dirs=("out",))
    t0 = time.perf_counter()
    manifest, report = stream_ingest(
        args.data, event_format(args), args.out, TokenizerConfig(), n_shards=args.shards,
        batch_bytes=args.batch_size or BATCH_BYTES, quarantine_path=args.quarantine,
        progress=not args.quiet, workers=args.workers)
    seconds = time.perf_counter() - t0
    print(report.summary())
    print(f"{manifest['events']:,} events of {manifest['sequences']:,} shoppers in "
          f"{len(manifest['shards'])} shards under {args.out} in {seconds:.1f} s "
          f"({report.rows_read / max(seconds, 1e-9):,.0f} rows/s)")
    return 0


def add_tokenize_command(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``tokenize`` with the seqanom parser's ``add``."""
    p = add("tokenize", cmd_tokenize,
            "stream a large event file into tokenised shards on disk (bounded memory)")
    add_input_args(p, tokens=False)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory for the shards and manifest.json (new or empty)")
    p.add_argument("--shards", type=_int_up_to(4096), metavar="N",
                   help="shards to partition shoppers into (default: one per 64 MB of input)")
    p.add_argument("--batch-size", type=_batch_size, metavar="SIZE",
                   help="bytes of CSV text per record batch (e.g. 16M, the default)")
    p.add_argument("--workers", type=_int_up_to(64), default=1, metavar="N",
                   help="processes tokenising shards at once (each holds one shard; default 1)")
