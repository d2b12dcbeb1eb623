"""The ``seqanom`` parser and entry point: every layer's commands under one program.

Any ``SeqanomError`` is shown as one line on stderr with exit status 2; an unexpected failure as
one line with status 3 (the traceback with ``--verbose``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from seqanom_core import __version__
from seqanom_core.errors import ConfigError, SeqanomError
from seqanom_core.ingest import memory_limit
from simulation.cli.audit_command import add_audit_command
from simulation.cli.central_commands import add_central_commands
from simulation.cli.detector_commands import add_detector_commands
from simulation.cli.live_commands import add_live_commands
from simulation.cli.pretrain_command import add_pretrain_command
from simulation.cli.research_commands import add_research_commands
from simulation.cli.site_commands import add_site_commands
from simulation.cli.tokenize_command import add_tokenize_command

EXIT_ERROR = 2  # bad input or settings: a one-line error
EXIT_INTERNAL = 3  # an unexpected failure (traceback with --verbose)
log = logging.getLogger("seqanom")
# line breaks (those of str.splitlines too), other control characters, lone surrogates
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def one_line(text: str) -> str:
    """``text`` with its line breaks, control characters and lone surrogates escaped (``\\n``):
    a value from the command line cannot split an error into two lines or reach the terminal
    as a control sequence."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (naming the command and the option)
    and exit status 2, like every other error of the command; ``--help`` shows the usage."""

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        """As argparse, but ``--option=--`` is an error: Python 3.11's argparse drops the
        ``--`` and stores an empty list, skipping the option's type check."""
        if action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected a value, not '--'")
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit 2."""
        self.exit(EXIT_ERROR, one_line(f"{self.prog}: error: {message} (see '{self.prog} --help')")
                  + "\n")


def memory_size(text: str) -> int:
    """argparse type of ``--max-file-memory``: bytes of a size like 8G."""
    try:
        return memory_limit.parse_size(text, "--max-file-memory")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--max-file-memory: ")) from None


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (``--help`` on every command is complete)."""
    parser = OneLineParser(
        prog="seqanom",
        description="Privacy-preserving anomaly detection on e-commerce shopper event sequences.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"seqanom {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-file-memory", type=memory_size, metavar="SIZE",
                        help="memory a reader may use for one input file (e.g. 8G; default: "
                             f"{memory_limit.ENV}, else half this machine's memory): a larger "
                             "file is refused in one line before it is read")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=fn.__doc__)
        p.set_defaults(func=fn)
        return p

    add_detector_commands(add)
    add_pretrain_command(add)
    add_live_commands(add)
    add_research_commands(add)
    add_audit_command(add)
    add_central_commands(add)
    add_site_commands(add)
    add_tokenize_command(add)
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


def _undecodable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The error for a value that is not valid UTF-8 (the bytes of an argument the console's
    encoding cannot decode, kept as lone surrogates): nothing could print or write it; None
    when every value is text."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        bad = next((v for v in values if isinstance(v, str) and _SURROGATE.search(v)), None)
        if bad is not None:
            name = action.option_strings[-1] if action.option_strings else action.metavar
            return f"{name or action.dest} {bad}: not valid UTF-8 text (names and paths must be)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seqanom`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    undecodable = _undecodable(parser, args)
    if undecodable:
        print(one_line(f"seqanom {args.command}: error: {undecodable}"), file=sys.stderr)
        return EXIT_ERROR
    if args.max_file_memory is not None:  # the readers, and the processes started here, see it
        os.environ[memory_limit.ENV] = str(args.max_file_memory)
    try:
        return int(args.func(args))
    except SeqanomError as err:
        print(one_line(f"seqanom {args.command}: error: {err}"), file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # a path we cannot read or write: name it
        where = f"{err.filename}: " if err.filename else ""
        print(one_line(f"seqanom {args.command}: error: {where}{err.strerror or err}"),
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a case the checks above missed: one line, traceback on request
        if args.verbose:
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else ""
        print(one_line(f"seqanom {args.command}: internal error: {type(err).__name__}: {first} "
                       "(run again with --verbose for the traceback)"), file=sys.stderr)
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
