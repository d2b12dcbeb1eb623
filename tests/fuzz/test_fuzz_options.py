"""Generated option values for every option of every ``seqanom`` command: the command either
refuses the value with exit status 2 and one error line naming the option or the file, or runs
(exit 0) with rows read = kept + quarantined in every ingest summary it prints. Never exit 3,
never a traceback, never a hang.

How it runs, and what counts:

- The options come from the parser itself (``build_parser``): every option and positional
  argument of every subcommand is one test case, so a new option is fuzzed without touching this
  file, and a subcommand without a base invocation in ``BASE`` fails.
- Each example is the command's base invocation (a minimal valid one on tiny fixtures, copied
  into a fresh directory that is also the working directory) with ONE option's value replaced
  or added; ``main(argv)`` runs in this process (an argparse error is its ``SystemExit``). A
  time guard (SIGALRM raising a ``BaseException``, which ``main`` does not catch) turns a hang
  into a failure naming the argv.
- Values: malformed numbers (empty, words, nan, inf, 1e400, huge, negative, Unicode digits),
  text with control characters, newlines and Unicode, and paths: missing, a directory where a
  file is expected, a file where a directory is expected, /dev/null, a FIFO, a symlink loop, an
  output equal to an input (the fixtures themselves).
- Valid values that would start long work are not generated: an integer option sizes work (more
  shoppers, epochs, layers) unless ``UNBOUNDED`` says otherwise, and gets no valid value above
  its cap; ``simulate`` runs with ``--prepare-only``, ``superlink``/``supernode`` with
  ``--dry-run`` (and ``os.execve`` refuses), ``serve``'s ``uvicorn.run`` is a stub that only
  records the call (``serve`` checks its address before, binding it for a moment), ``rounds --follow`` polls twice, ``stream`` reads two events from stdin.
- "One line": stderr holds exactly one error line (``seqanom COMMAND: error: ...``, argparse's
  errors included: the parser prints them as one line without the usage), and it is the last
  line; lines before it may only be warnings (``seqanom COMMAND: warning: ...`` and the insecure
  mode banner of ``!!`` lines). Line breaks are those of ``str.splitlines`` (a U+2028 in a value
  counts). The error names the option when it contains an option string, its ``dest`` (or with
  dashes) or its metavar; or the file when it contains the value (as given, escaped or
  absolute) of a text or path option.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulation.cli.main import build_parser, main, one_line

pytestmark = pytest.mark.integration

EXAMPLES = 15  # per option of every command
LIMIT_S = 60  # per example: the time guard (a tiny job takes well under a second)
EVENTS_PER_SHOPPER = 20  # of the fixture's 40 shoppers: every job on them is quick
CAP = 8  # largest valid value generated for an integer option that sizes work
CAPS = {("demo", "epochs"): 2}  # demo trains a full-size model: a few epochs only
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])

# integer options whose size does not scale any work (seeds, ports, limits, and ``simulate``
# settings that --prepare-only only writes down): they also get huge values
UNBOUNDED = {
    ("train", "seed"), ("train", "dp_seed"), ("pretrain", "seed"), ("audit", "seed"), ("audit", "dp_seed"),
    ("inject", "seed"), ("split", "seed"), ("synth", "seed"), ("demo", "seed"),
    ("simulate", "seed"), ("simulate", "dp_seed"), ("simulate", "rounds"),
    ("simulate", "local_epochs"), ("simulate", "calibration_every"),
    ("simulate", "audit_canaries"), ("score", "top_k"), ("serve", "max_shoppers"),
    ("stream", "max_shoppers"), ("serve", "port"), ("serve", "max_body_bytes"),
    ("credentials", "days"), ("superlink", "port"), ("supernode", "port"),
    ("supernode", "threads"), ("supernode", "max_retries"), ("supernode", "max_rounds"),
}
# flags in the base invocation that keep the command short: not fuzzed
KEEP = {("simulate", "prepare_only"), ("superlink", "dry_run"), ("supernode", "dry_run"),
        ("rounds", "follow")}

SMALL = ["--epochs", "1", "--d-model", "8", "--layers", "1", "--max-len", "16",
         "--batch-size", "8"]
# a minimal valid invocation of every command, in the example's directory (the fixtures' copy)
BASE: dict[str, list[str]] = {
    "train": ["train", "--data", "events.csv", "--out", "out_model", "--model", "lstm", *SMALL],
    "score": ["score", "--model", "model", "--data", "test.csv", "--labels", "labels.csv",
              "--out", "scores.csv"],
    "ledger": ["ledger", "ledger.json"],
    "serve": ["serve", "--model", "model"],
    "stream": ["stream", "--model", "model"],
    "inject": ["inject", "--data", "events.csv", "--out", "inj.csv", "--labels", "inj_labels.csv"],
    "split": ["split", "--data", "events.csv", "--train-out", "tr.csv", "--test-out", "te.csv"],
    "synth": ["synth", "--shoppers", "5", "--out", "synth.csv"],
    "tokenize": ["tokenize", "--data", "events.csv", "--out", "tok"],
    "pretrain": ["pretrain", "--data", "events.csv", "--out", "pre", "--size", "tiny",
                 "--epochs", "1", "--max-len", "16", "--batch-size", "8"],
    "demo": ["demo", "--shoppers", "40", "--epochs", "1", "--out", "demo"],
    "simulate": ["simulate", "--prepare-only", "--shoppers", "24", "--sites", "2", "--out",
                 "sim"],
    "audit": ["audit", "--data", "events.csv", "--out", "audit", "--canaries", "4",
              "--canary-length", "4", *SMALL],
    "credentials": ["credentials", "--out", "new_cred", "--sites", "a"],
    "superlink": ["superlink", "--credentials", "cred", "--dry-run"],
    "rounds": ["rounds", "ckpt", "--follow"],
    "connection": ["connection", "--address", "127.0.0.1:9093", "--root-certificates",
                   "cred/ca.pem"],
    "supernode": ["supernode", "--superlink", "127.0.0.1:9092", "--root-certificates",
                  "cred/ca.pem", "--private-key", "cred/sites/a/a.key", "--data", "events.csv",
                  "--ledger", "site_ledger.json", "--dry-run"],
}

NUMBERS = ["", " ", "abc", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e-400", "-1", "0",
           "-0", "0.5", "1.5", "2", "3", "0x10", "1_0", "\u0661\u0662", "9" * 30, "-" + "9" * 30,
           "4294967296", "1e18", "+3", " 7 ", "1,5", "5\n", "\u00bd", "-0.0", "1e-320"]
TEXTS = ["", " ", "-", "--", "-x", "a b", "x\ny", "\r", "\t", "\u00e9", "\u65e5\u672c",
         "\u202eevil", "\x1b[2J", "a\u2028b", "a" * 300, ",", "=", "a=b", "'\"", "\\", "\x01\x7f",
         "caf\udce9"]
# relative to the example's directory; the fixtures themselves make an output equal to an input
PATHS = ["missing.csv", "no/such/dir/x.csv", "dir", "notes.txt", "empty.csv", "/dev/null",
         "fifo", "loop", "dangling", ".", "events.csv", "test.csv", "labels.csv", "model",
         "ledger.json", "cred", "cred/ca.pem", "cred/sites/a/a.key", "ckpt", "token.txt"]
HOSTS = ["", "localhost", "::1", "[::1]", "a b", "-x", "host:1", ":9092", "127.0.0.1:0",
         "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:", "[::1]:9092", "\u00e9:9092", "x\ny:1",
         "256.256.256.256:9092", "a..b:1", "h:" + "9" * 30]
# free text with controls, newlines and Unicode; no "/" or "~" (paths stay in the example's
# directory) and no NUL (a command line cannot hold one)
GARBAGE = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00~"),
                  max_size=16).filter(lambda s: s not in (".", ".."))
SUMMARY = re.compile(r"([\d,]+) rows read, ([\d,]+) kept(?:, ([\d,]+) quarantined)?")
EVENT = {"user_id": "u1", "item_id": "i1", "category_id": "c1", "behavior": "view"}


class Hang(BaseException):
    """The time guard went off (``main`` catches ``Exception`` only)."""


class Exec(BaseException):
    """A command tried to replace the test process (``os.execve``)."""


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The ``seqanom`` subcommands and their parsers, from the parser itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A subcommand's options and positional arguments by dest (--help left out)."""
    return {a.dest: a for a in p._actions if not isinstance(a, argparse._HelpAction)}


CASES = [(cmd, dest) for cmd, p in subcommands().items() for dest in options(p)
         if (cmd, dest) not in KEEP]


def _rotated(pool: list[str], key: str) -> list[str]:
    """The pool starting at a place of its own per option (derandomized runs then try other
    values first for each option)."""
    k = zlib.crc32(key.encode()) % len(pool)
    return pool[k:] + pool[:k]


def _too_big(value: str, cap: int) -> bool:
    """Whether ``value`` reads as a finite number above ``cap`` (valid, but long work)."""
    try:
        x = float(value)
    except ValueError:
        return False
    return math.isfinite(x) and abs(x) > cap


def _pool(cmd: str, action: argparse.Action) -> list[str]:
    from simulation.cli.flower_launch import host_name, host_port

    if action.choices is not None:
        choices = [str(c) for c in action.choices]
        return [*choices, *(c.upper() for c in choices), *(c + " " for c in choices), "", "abc",
                *TEXTS[4:12]]
    if action.type in (host_name, host_port):
        return HOSTS + TEXTS[:8]
    if action.type is not None:  # numbers
        pool = NUMBERS + TEXTS[5:10]
        if action.type is not float and (cmd, action.dest) not in UNBOUNDED:
            cap = CAPS.get((cmd, action.dest), CAP)
            pool = [v for v in pool if not _too_big(v, cap)]
        return pool
    return PATHS + TEXTS


@st.composite
def option_tokens(draw, cmd: str, action: argparse.Action) -> tuple[list[str], str | None]:
    """(argv tokens giving ``action`` a generated value, the value; None for a bare flag)."""
    flag = draw(st.sampled_from(action.option_strings)) if action.option_strings else None
    if action.nargs == 0:  # a flag: given, or given a value it does not take
        value = draw(st.one_of(st.none(), st.sampled_from(["", "1", "x y"])))
        return ([flag] if value is None else [f"{flag}={value}"]), value
    pool = _rotated(_pool(cmd, action), f"{cmd} {action.dest}")
    value = draw(st.one_of(st.sampled_from(pool), st.sampled_from(pool), GARBAGE)
                 if action.choices is None and action.type is None else st.sampled_from(pool))
    if flag is None:  # a positional argument
        return [value], value
    if action.nargs == "+":
        more = draw(st.lists(st.sampled_from(pool), max_size=2))
        return [flag, value, *more], value
    if draw(st.booleans()):
        return [f"{flag}={value}"], value
    return [flag, value], value


def _without(base: list[str], action: argparse.Action) -> list[str]:
    """The base invocation without ``action``'s option (and its value), or its positional."""
    out, i = [], 0
    while i < len(base):
        tok = base[i]
        if tok in action.option_strings:
            i += 1 if action.nargs == 0 else 2
            continue
        out.append(tok)
        i += 1
    if not action.option_strings:  # the command's one positional argument follows its name
        out = [out[0], *out[2:]]
    return out


def _names(line: str, action: argparse.Action, value: str | None) -> bool:
    """Whether an error line names the option, or (a text or path option) its value."""
    names = [*action.option_strings, action.dest, action.dest.replace("_", "-")]
    if isinstance(action.metavar, str):
        names.append(action.metavar)
    if value is not None and action.type is None and action.choices is None:
        if value.strip():  # a value of only spaces names nothing
            names += [value, repr(value)[1:-1], os.path.abspath(value)]
        if one_line(value) != value:  # controls, shown escaped
            names.append(one_line(value))
        if not value:
            names.append("''")
    return any(n and n in line for n in names)


def _check(cmd: str, action: argparse.Action, value: str | None, argv: list[str], code: int,
           out: str, err: str) -> None:
    shown = f"seqanom {' '.join(map(repr, argv))}"
    assert "Traceback" not in out + err, f"{shown}: a traceback\n{err}"
    assert code in (0, 2), f"{shown}: exit {code}\n{err}"
    if code == 0:
        for m in SUMMARY.finditer(out):
            read, kept, quarantined = (int((g or "0").replace(",", "")) for g in m.groups())
            assert read == kept + quarantined, f"{shown}: {m.group(0)}"
        return
    lines = err.splitlines()
    errors = [k for k, line in enumerate(lines) if ": error: " in line]
    assert len(errors) == 1 and errors[0] == len(lines) - 1 and lines[-1].strip(), \
        f"{shown}: not one error line as the last line of stderr:\n{err}"
    for line in lines[:-1]:
        assert line.startswith(("!!", f"seqanom {cmd}: warning: ")) or not line.strip(), \
            f"{shown}: stderr before the error is not a warning:\n{err}"
    assert _names(lines[-1], action, value), f"{shown}: the error names neither the option " \
        f"nor the file:\n{lines[-1]}"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Iterator[Path]:
    """Tiny inputs every base invocation runs on: events, labelled test events, a model, a
    privacy ledger, credentials, an empty checkpoint directory, a token file."""
    import torch

    from seqanom_core.ingest import read_events, write_events

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny jobs: a second thread only spins on a busy machine
    d = tmp_path_factory.mktemp("option-fixtures")
    assert main(["-q", "synth", "--shoppers", "40", "--out", str(d / "events.csv"), "--seed",
                 "1"]) == 0
    events = read_events(d / "events.csv", "seqanom")[0]
    first = events.to_pandas().groupby("user_id").head(EVENTS_PER_SHOPPER)
    write_events(events.take(first.index.to_numpy()), d / "events.csv")
    steps = [
        ["inject", "--data", str(d / "events.csv"), "--out", str(d / "test.csv"), "--labels",
         str(d / "labels.csv"), "--rate", "0.5", "--seed", "1"],
        ["train", "--data", str(d / "events.csv"), "--out", str(d / "model"), "--model",
         "lstm", *SMALL],
        ["train", "--data", str(d / "events.csv"), "--out", str(d / "dp_model"), "--model",
         "lstm", *SMALL, "--dp", "--epsilon", "50", "--ledger", str(d / "ledger.json"),
         "--site", "a"],
        ["credentials", "--out", str(d / "cred"), "--sites", "a"],
    ]
    for argv in steps:
        assert main(["-q", *argv]) == 0, argv
    shutil.rmtree(d / "dp_model")
    (d / "ckpt").mkdir()
    (d / "token.txt").write_text("a-token-of-some-thirty-characters\n")
    yield d
    torch.set_num_threads(threads)


def _example_dir(fixtures: Path, root: Path) -> Path:
    """A fresh copy of the fixtures, with the special paths beside them."""
    d = root / "example"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(fixtures, d, symlinks=True)
    (d / "dir").mkdir()
    (d / "dir" / "inside.txt").write_text("x\n")
    (d / "notes.txt").write_text("not, a, model\nor, a, ledger\n")
    (d / "empty.csv").write_bytes(b"")
    os.mkfifo(d / "fifo")
    (d / "loop").symlink_to("loop")
    (d / "dangling").symlink_to("nowhere")
    return d


def _run(argv: list[str], stdin: str) -> int:
    """``main(argv)`` under the time guard; an argparse exit is its status."""
    def alarm(signum, frame):  # noqa: ANN001, ARG001
        raise Hang

    old = signal.signal(signal.SIGALRM, alarm)
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    try:
        try:
            return main(argv)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        sys.stdin = old_stdin


@pytest.fixture
def contained(monkeypatch, tmp_path):
    """Nothing leaves the test: no exec, no server, no endless polling, Flower's home in tmp."""
    import uvicorn

    from server import round_progress

    def execve(*args, **kwargs):  # noqa: ANN002, ANN003, ARG001
        raise Exec

    def follow_rows(checkpoint_dir, interval, *, seen=0, **kwargs):  # noqa: ANN001, ARG001
        def sleep(s: float) -> None:  # what time.sleep refuses, without the wait
            if not (math.isfinite(s) and 0 <= s <= 86400):
                time.sleep(s)

        return real_follow(checkpoint_dir, interval, seen=seen, polls=2, sleep=sleep)

    real_follow = round_progress.follow_rows
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(round_progress, "follow_rows", follow_rows)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.chdir(tmp_path)
    threads = set(threading.enumerate())
    yield tmp_path
    left = [t for t in threading.enumerate() if t not in threads and not t.daemon]
    assert not left, f"threads left running: {left}"


def test_every_command_has_a_base_invocation():
    """A new subcommand is fuzzed only with a minimal valid invocation to vary."""
    commands = set(subcommands())
    assert commands == set(BASE), (f"no base invocation for {sorted(commands - set(BASE))}; "
                                   f"stale: {sorted(set(BASE) - commands)}")


@pytest.mark.parametrize(("cmd", "dest"), CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_a_generated_option_value_is_refused_in_one_line_or_run(cmd, dest, fixtures, contained,
                                                                capsys):
    action = options(subcommands()[cmd])[dest]
    root = contained

    @FUZZ
    @given(drawn=option_tokens(cmd, action))
    def run(drawn: tuple[list[str], str | None]) -> None:
        tokens, value = drawn
        os.chdir(root)
        d = _example_dir(fixtures, root)
        os.chdir(d)
        argv = ["-q", *_without(BASE[cmd], action), *tokens]
        capsys.readouterr()
        try:
            code = _run(argv, stdin="".join(json.dumps({**EVENT, "timestamp": t}) + "\n"
                                            for t in (1_600_000_000, 1_600_000_060)))
        except Hang:
            pytest.fail(f"seqanom {argv}: still running after {LIMIT_S} s")
        except Exec:
            pytest.fail(f"seqanom {argv}: tried to replace the process (os.execve)")
        finally:
            os.chdir(root)
        out, err = capsys.readouterr()
        _check(cmd, action, value, argv, code, out, err)

    run()
