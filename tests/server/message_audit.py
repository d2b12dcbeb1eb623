"""Audit of what sites send: every reply of a run against the allowed shapes and the site's ids.

A site may send only what ``seqanom_core.federation.releases`` lists: the model's arrays (train),
scalar metrics named in ``SITE_METRICS``, calibration tree histograms over the fixed bins (``STAT_EDGES``,
``SCORE_EDGES``) that hold counts, and one ConfigRecord with its own name. ``audit_replies``
checks each reply against that exactly and scans every string, every scalar and every array for
the sites' user and item ids; it raises ``MessageAuditError`` listing every problem found.

Ids are matched exactly everywhere; ids of at least ``MIN_SUBSTRING_ID`` characters also as
substrings of strings, numeric ids of at least ``MIN_NUMERIC_ID`` also as values of scalars and
arrays, and ids of at least ``MIN_BYTES_ID`` characters also inside arrays' raw bytes (shorter
ids would match ordinary numbers and random bytes by chance).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord

from seqanom_core.federation import message_keys
from seqanom_core.federation.calibration_histograms import TREE_SIZE, tree_levels
from seqanom_core.federation.releases import SITE_METRICS
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.models import build_model, model_arrays
from seqanom_core.scoring import stat_names
from seqanom_core.sequences import vocab_sizes

MIN_SUBSTRING_ID = 4
MIN_NUMERIC_ID = 1000
MIN_BYTES_ID = 6
SCORE_QUERY = f"{MessageType.QUERY}.{message_keys.SCORE_SUMMARY}"
_TOKEN = re.compile(rb"[0-9A-Za-z_.:-]{%d,}" % MIN_BYTES_ID)


class MessageAuditError(AssertionError):
    """A site's reply holds something other than the allowed records, or one of its ids."""


@dataclass(frozen=True)
class ReplyPolicy:
    """What the replies of one run may hold."""

    param_shapes: Mapping[str, tuple[int, ...]]  # model parameter name -> shape
    site_names: Mapping[int, str]  # node id -> the one string that node may send (its name)
    identifiers: frozenset[str]  # user and item ids of every site (none may leave)
    calibration_noise: float  # std of the noise per histogram bin without DP (counts)
    dp: bool = False  # under DP each reply states its noise (calibration-noise)

    @property
    def stat_shape(self) -> tuple[int, int]:
        return (len(stat_names()), TREE_SIZE)

    @property
    def score_shape(self) -> tuple[int]:
        return (TREE_SIZE,)


def model_shapes(run_config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model the run config builds (the server's builder)."""
    s = settings_from_run_config(dict(run_config))
    model = build_model(s.model, vocab_sizes(s.tokenizer, "events"))
    return {k: tuple(v.shape) for k, v in model_arrays(model).items()}


def site_identifiers(files: Iterable[Path]) -> frozenset[str]:
    """Every ``user_id`` and ``item_id`` in the given event (.parquet) and label (.csv) files."""
    ids: set[str] = set()
    for f in files:
        if f.suffix == ".parquet":
            cols = [c for c in ("user_id", "item_id") if c in pq.read_schema(f).names]
            table = pq.read_table(f, columns=cols)
            for c in cols:
                ids.update(str(v) for v in table.column(c).unique().to_pylist())
        elif f.suffix == ".csv":
            frame = pd.read_csv(f, dtype=str)
            for c in ("user_id", "item_id"):
                if c in frame:
                    ids.update(frame[c].dropna())
    return frozenset(ids)


class _IdScan:
    """Finds the ids in strings, scalars and arrays (built once per audit)."""

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids
        self.long = [i for i in ids if len(i) >= MIN_SUBSTRING_ID]
        self.bytes_ids = {i.encode() for i in ids if len(i) >= MIN_BYTES_ID}
        self.numeric = np.array(sorted({int(i) for i in ids if i.isdigit()
                                        and MIN_NUMERIC_ID <= int(i) < 2**53}), dtype=np.float64)

    def in_string(self, s: str) -> list[str]:
        if s in self.ids:
            return [s]
        return [i for i in self.long if i in s]

    def in_values(self, values: np.ndarray) -> list[str]:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v) & (v == np.round(v))]
        hits = np.intersect1d(v, self.numeric)
        return [str(int(h)) for h in hits[:3]]

    def in_bytes(self, data: bytes) -> list[str]:
        found = []
        for tok in _TOKEN.findall(data):
            found += [b.decode() for b in self.bytes_ids if b in tok]
        return found[:3]


def _strings(value) -> list[str]:
    """The strings in a ConfigRecord value (bytes read as Latin-1: every byte stays visible)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bytes):
            out.append(v.decode("latin-1"))
        elif isinstance(v, str):
            out.append(v)
    return out


def _check_arrays(where: str, record, expected: Mapping[str, tuple[int, ...]], scan: _IdScan,
                  problems: list[str]) -> dict[str, np.ndarray]:
    if not isinstance(record, ArrayRecord):
        problems.append(f"{where}: a {type(record).__name__}, expected an ArrayRecord")
        return {}
    if list(record.keys()) != list(expected):
        extra, missing = sorted(set(record) - set(expected)), sorted(set(expected) - set(record))
        problems.append(f"{where}: array names differ from {list(expected)[:3]}...: "
                        f"extra {extra}, missing {missing}")
    out = {}
    for name, arr in record.items():
        a = arr.numpy()
        out[name] = a
        if a.dtype.kind != "f":
            problems.append(f"{where}[{name!r}]: dtype {a.dtype}, expected float")
        if name in expected and tuple(a.shape) != tuple(expected[name]):
            problems.append(f"{where}[{name!r}]: shape {a.shape}, expected {expected[name]}")
        if a.dtype.kind in "fiub" and not np.isfinite(a.astype(np.float64)).all():
            problems.append(f"{where}[{name!r}]: NaN or Inf values")
        if a.dtype.kind in "fiub" and (hits := scan.in_values(a)):
            problems.append(f"{where}[{name!r}]: holds id value(s) {hits}")
        if hits := scan.in_bytes(a.tobytes()):
            problems.append(f"{where}[{name!r}]: raw bytes hold id(s) {hits}")
    return out


def _check_counts(where: str, hist: np.ndarray, noise: float, problems: list[str]) -> None:
    """Each level of each tree histogram counts the same shoppers once: every level sums to the
    root count +- noise (``noise``: the std per count), and no count is far below zero."""
    if hist.ndim == 0 or hist.dtype.kind != "f":
        return
    rows = hist.reshape(-1, hist.shape[-1])
    levels = tree_levels(rows)
    root = levels[-1][:, 0]
    for level in levels[:-1]:
        tol = 6.0 * noise * math.sqrt(level.shape[1] + 1) + 1e-6
        sums = level.sum(axis=1)
        if not np.all(np.abs(sums - root) <= tol):
            problems.append(f"{where}: a level of {level.shape[1]} bins sums to "
                            f"{np.round(sums[:3], 1).tolist()}..., not to the root count "
                            f"{np.round(root[:3], 1).tolist()} (+-{tol:.1f}): not counts of "
                            "the site's shoppers")
            return
        if np.any(level < -6.0 * noise - 1e-6):
            problems.append(f"{where}: counts far below zero (not a noisy histogram)")
            return


def audit_reply(reply: Message, node_id: int, policy: ReplyPolicy, scan: _IdScan) -> list[str]:
    """Problems of one reply (empty when it holds only what a site may send)."""
    mtype = reply.metadata.message_type
    where = f"node {node_id} {mtype} reply"
    problems: list[str] = []
    for s in (mtype, reply.metadata.group_id):
        if hits := scan.in_string(s):
            problems.append(f"{where}: metadata holds id(s) {hits}")
    if reply.has_error():
        reason = reply.error.reason or ""
        problems.append(f"{where}: is an error reply (code {reply.error.code}); reason checked "
                        "for ids below")
        if hits := scan.in_string(reason):
            problems.append(f"{where}: error reason holds id(s) {hits}")
        return problems
    content = reply.content
    allowed = {MessageType.TRAIN: {message_keys.METRICS, message_keys.SITE, message_keys.ARRAYS},
               MessageType.EVALUATE: {message_keys.METRICS, message_keys.SITE, message_keys.HISTOGRAMS},
               SCORE_QUERY: {message_keys.METRICS, message_keys.SITE, message_keys.HISTOGRAMS}}.get(mtype)
    if allowed is None:
        return problems + [f"{where}: unexpected message type {mtype!r}"]
    for key in content.keys():
        if hits := scan.in_string(key):
            problems.append(f"{where}: record name {key!r} holds id(s) {hits}")
    extra = sorted(set(content.keys()) - allowed)
    if extra:
        problems.append(f"{where}: records {extra} are not allowed (allowed: {sorted(allowed)})")
        for key in extra:
            rec = content[key]
            if isinstance(rec, ConfigRecord):
                strings = [s for k, v in rec.items() for s in [k, *_strings(v)]]
                hits = [h for s in strings for h in scan.in_string(s)]
                if hits:
                    problems.append(f"{where}: ConfigRecord {key!r} holds id(s) {hits[:3]}")
            elif isinstance(rec, ArrayRecord):
                _check_arrays(f"{where} {key!r}", rec, {}, scan, problems)
            elif isinstance(rec, MetricRecord):
                problems.extend(_metric_problems(f"{where} {key!r}", rec, scan))

    # the site's name: one ConfigRecord with one string, equal to the node's site name
    site = content.get(message_keys.SITE)
    if not isinstance(site, ConfigRecord):
        problems.append(f"{where}: no ConfigRecord {message_keys.SITE!r} with the site name")
    else:
        expected = policy.site_names.get(node_id)
        if dict(site) != {"name": expected}:
            problems.append(f"{where}: {message_keys.SITE!r} is {dict(site)!r}, expected only "
                            f"{{'name': {expected!r}}}")
        for k, v in site.items():
            for s in [k, *_strings(v)]:
                if hits := scan.in_string(s):
                    problems.append(f"{where}: {message_keys.SITE!r} holds id(s) {hits}")

    metrics = content.get(message_keys.METRICS)
    noise = policy.calibration_noise
    if not isinstance(metrics, MetricRecord):
        problems.append(f"{where}: no MetricRecord {message_keys.METRICS!r}")
    else:
        problems.extend(_metric_problems(f"{where} {message_keys.METRICS!r}", metrics, scan))
        if isinstance(metrics.get("calibration-noise"), (int, float)):
            noise = float(metrics["calibration-noise"])  # the score histogram's, per count
    declined = isinstance(metrics, MetricRecord) and metrics.get("declined") == 1.0

    if mtype == MessageType.TRAIN:
        if message_keys.ARRAYS in content:
            if declined:
                problems.append(f"{where}: a declined round sent model arrays")
            _check_arrays(f"{where} {message_keys.ARRAYS!r}", content[message_keys.ARRAYS], policy.param_shapes,
                          scan, problems)
        elif not declined:
            problems.append(f"{where}: neither model arrays nor declined=1")
    elif message_keys.HISTOGRAMS not in content:
        if not declined:
            problems.append(f"{where}: neither a {message_keys.HISTOGRAMS!r} record nor "
                            "declined=1")
    elif declined:
        problems.append(f"{where}: a declined calibration sent histograms")
    else:
        name, shape = ((message_keys.STAT_HIST, policy.stat_shape) if mtype == MessageType.EVALUATE
                       else (message_keys.SCORE_HIST, policy.score_shape))
        arrays = _check_arrays(f"{where} {message_keys.HISTOGRAMS!r}", content[message_keys.HISTOGRAMS],
                               {name: shape}, scan, problems)
        if name in arrays and arrays[name].shape == shape:
            # under DP one noise multiplier: the statistic histograms' noise is the score
            # histogram's times sqrt(statistics) (their sensitivities' ratio)
            scale = math.sqrt(len(stat_names())) if policy.dp and name == message_keys.STAT_HIST else 1.0
            _check_counts(f"{where} {name!r}", arrays[name], noise * scale, problems)
    return problems


def _metric_problems(where: str, record, scan: _IdScan) -> list[str]:
    if not isinstance(record, MetricRecord):
        return [f"{where}: a {type(record).__name__}, expected a MetricRecord"]
    problems = []
    for k, v in record.items():
        if k not in SITE_METRICS:
            problems.append(f"{where}: metric {k!r} is not in SITE_METRICS")
        if hits := scan.in_string(k):
            problems.append(f"{where}: metric name {k!r} holds id(s) {hits}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            problems.append(f"{where}[{k!r}]: {type(v).__name__}, expected a scalar number")
            continue
        if hits := scan.in_values(np.array([v])):
            problems.append(f"{where}[{k!r}] = {v!r} is an id {hits}")
    return problems


def audit_replies(replies: Iterable[Message], policy: ReplyPolicy) -> Counter:
    """Audit every reply; raise ``MessageAuditError`` with all problems, else count replies by
    (message type, declined)."""
    scan = _IdScan(policy.identifiers)
    problems: list[str] = []
    seen: Counter = Counter()
    for reply in replies:
        nid = reply.metadata.src_node_id
        problems += audit_reply(reply, nid, policy, scan)
        declined = (not reply.has_error() and isinstance(reply.content.get(message_keys.METRICS),
                                                         MetricRecord)
                    and reply.content[message_keys.METRICS].get("declined") == 1.0)
        seen[(reply.metadata.message_type, declined)] += 1
    if problems:
        raise MessageAuditError(f"{len(problems)} problem(s) in site replies:\n  "
                                + "\n  ".join(problems))
    return seen
