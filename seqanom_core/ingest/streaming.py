"""Streaming ingest of an event file too big to hold: record batches, shards by shopper, tokens.

Pass 1 reads the file in record batches (``pyarrow.csv.open_csv`` / ``ParquetFile.iter_batches``),
checks every batch exactly as :func:`read_events` checks a file (``conversion._validated``: the
same reasons, counted in one :class:`IngestReport`, rejected rows in one quarantine CSV with their
source line) and appends the kept events to one of N Arrow IPC partition files chosen by a hash
of the shopper id, so every shopper's events land in one partition whatever the input's order.
Pass 2 turns each partition into a tokenised shard (``build_sequences``): ``offsets.npy`` and one
int32 ``.npy`` per channel (read memory-mapped by :mod:`seqanom_core.ingest.shards`) and
``ids.arrow``, described by ``manifest.json``. Memory is bounded by the batch and by one
partition, not by the file.

Differences from :func:`read_events`: the file is read in its format's first encoding only; a
batch in which a whole field is unreadable (which refuses a whole file) is quarantined with that
reason, and only a file with no valid row at all is refused.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm.auto import tqdm

from seqanom_core.config import TokenizerConfig
from seqanom_core.errors import ConfigError, DataFileError, SchemaError
from seqanom_core.formats import FormatSpec, get_format, parse_mapping
from seqanom_core.ingest.conversion import _validated
from seqanom_core.ingest.files import _arrow_error, _decode_head, _open_checked, _read_head
from seqanom_core.ingest.memory_limit import check_memory
from seqanom_core.ingest.quarantine import _line_numbers, _write_quarantine
from seqanom_core.ingest.readers import _csv_options, _csv_plan, _plain_column, parquet_layout
from seqanom_core.ingest.report import IngestReport, _log_summary
from seqanom_core.sequences import _mix64, build_sequences

logger = logging.getLogger("seqanom_core.ingest")

MANIFEST = "manifest.json"
#: Default bytes of CSV text per record batch (16 MB peaked at 0.85 GB where 64 MB peaked at
#: 1.5 GB, for the same CPU time: 3x10^7 events, 2026-12-07).
BATCH_BYTES = 16 << 20
#: Peak bytes per event of a process tokenising one partition (measured about 310 with the
#: interpreter, 2 M-event partitions, 2026-12-07).
PARTITION_EVENT_BYTES = 350
#: Peak bytes of pass 1 above the interpreter's (about 0.3 GB) per byte of batch, like
#: ``memory_limit``'s factors (measured: 64 MB batches peaked at 0.87 GB for 10^7 events and
#: 2.9 GB for 10^8; 16 MB batches at 0.85 GB for 3x10^7).
BATCH_FACTOR = 42
#: Input bytes per partition when the number of shards is not given (about 1.5-2 M events).
SHARD_INPUT_BYTES = 64 << 20
MAX_SHARDS = 4096
CHANNEL_DTYPE = np.int32

_Batch = tuple[dict[str, pa.ChunkedArray], dict[str, str], list[tuple[int | None, str]], int]


def _spec(fmt: str | FormatSpec) -> FormatSpec:
    if isinstance(fmt, FormatSpec):
        return fmt
    return parse_mapping(fmt) if "=" in fmt else get_format(fmt)


#: Distinct values hashed at once: bounds the per-byte temporaries (about 50 bytes per byte).
_HASH_CHUNK = 1 << 17


def _hash_strings(dic: pa.Array) -> np.ndarray:
    """``string_hash`` of distinct (non-null) large strings, all at once."""
    offs = np.frombuffer(dic.buffers()[1], np.int64, count=dic.offset + len(dic) + 1)[dic.offset:]
    starts, lengths = offs[:-1], np.diff(offs)
    hashed = np.zeros(len(dic), dtype=np.uint64)
    total = int(lengths.sum())
    if total:
        data = np.frombuffer(dic.buffers()[2], np.uint8)
        seg = np.cumsum(lengths) - lengths
        pos = np.arange(total, dtype=np.int64) - np.repeat(seg, lengths)
        byte = data[np.repeat(starts, lengths) + pos].astype(np.uint64)
        contrib = _mix64(byte + (pos.astype(np.uint64) << np.uint64(8)) + np.uint64(1))
        nonempty = lengths > 0
        hashed[nonempty] = np.add.reduceat(contrib, seg[nonempty])
    return _mix64(hashed ^ lengths.astype(np.uint64))


def string_hash(values: pa.Array) -> np.ndarray:
    """A well-mixed uint64 hash of each string (vectorised over its bytes; nulls hash as '')."""
    enc = values.dictionary_encode()
    dic = enc.dictionary.cast(pa.large_string())
    if not len(dic):
        return np.zeros(len(values), dtype=np.uint64)
    hashed = np.concatenate([_hash_strings(dic.slice(i, _HASH_CHUNK))
                             for i in range(0, len(dic), _HASH_CHUNK)])
    return hashed[enc.indices.fill_null(0).to_numpy(zero_copy_only=False)]


def _csv_batches(p: Path, kind: str, spec: FormatSpec, batch_bytes: int
                 ) -> tuple[FormatSpec, Iterator[_Batch]]:
    """The layout of a CSV and an iterator of (raw columns, field->column, ragged rows, first
    source line) per record batch."""
    head = _read_head(p, kind)
    if not head.strip():
        raise DataFileError(f"{p}: file is empty")
    text, encoding = _decode_head(p, head, spec.encodings)
    plan = _csv_plan(p, spec, text)
    ragged: list[tuple[int | None, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        ragged.append((row.number, row.text))
        return "skip"

    # the serial reader numbers ragged rows (for their lines); as fast as the threaded one in
    # streaming (measured 0.74 s vs 0.72-1.7 s for 10 M Taobao rows)
    ropts, popts, copts = _csv_options(plan, encoding, False, on_invalid)
    ropts.block_size = batch_bytes

    def mine(line: int, n: int) -> tuple[list[tuple[int | None, str]], int]:
        """The ragged rows among a batch of n rows from ``line`` on, and the line after it."""
        if any(num is None for num, _ in ragged):  # unnumbered: all collected so far
            taken, end = list(ragged), line + n + len(ragged)
        else:
            nums = np.array(sorted(num for num, _ in ragged), dtype=np.int64)
            end = line + n
            while line + n + int((nums < end).sum()) != end:
                end = line + n + int((nums < end).sum())
            taken = [r for r in ragged if r[0] is not None and r[0] < end]
        ragged[:] = [r for r in ragged if r not in taken]
        return taken, end

    def batches() -> Iterator[_Batch]:
        line = plan.skip + 1
        stream = pa.input_stream(str(p), compression="gzip" if kind == "gzip" else None)
        try:
            reader = pacsv.open_csv(stream, read_options=ropts, parse_options=popts,
                                    convert_options=copts)
            for batch in reader:
                taken, end = mine(line, batch.num_rows)
                raw = {fld: pa.chunked_array([batch.column(name)])
                       for fld, name in plan.fields_of.items()}
                yield raw, plan.fields_of, taken, line
                line = end
            if ragged:  # ragged rows after the last batch
                empty = {f: pa.chunked_array([], plan.types[c]) for f, c in plan.fields_of.items()}
                yield empty, plan.fields_of, list(ragged), line
        except UnicodeError as err:
            raise DataFileError(f"{p}: not valid {encoding} text ({err})") from None
        except (pa.ArrowInvalid, OSError) as err:
            raise _arrow_error(p, err) from None
        finally:
            stream.close()

    return plan.lay, batches()


def _parquet_batches(p: Path, spec: FormatSpec, batch_rows: int
                     ) -> tuple[FormatSpec, Iterator[_Batch]]:
    """The layout of a parquet file and an iterator over its record batches."""
    pf, names, lay, header = parquet_layout(p, spec)
    fields_of = {fld: names[header[col]] for fld, col in lay.field_columns().items() if col in header}

    def batches() -> Iterator[_Batch]:
        row = 1
        try:
            for batch in pf.iter_batches(batch_size=batch_rows,
                                         columns=list(dict.fromkeys(fields_of.values()))):
                raw = {fld: _plain_column(p, fld, name, pa.chunked_array([batch.column(name)]))
                       for fld, name in fields_of.items()}
                yield raw, fields_of, [], row
                row += batch.num_rows
        except (pa.ArrowException, OSError) as err:
            raise _arrow_error(p, err) from None

    return lay, batches()


def _n_shards(p: Path, kind: str, n_shards: int | None) -> int:
    if n_shards is not None:
        if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= MAX_SHARDS:
            raise ConfigError(f"shards must be an integer from 1 to {MAX_SHARDS}, not {n_shards!r}")
        return n_shards
    size = p.stat().st_size * (4 if kind in ("gzip", "parquet") else 1)
    return max(1, min(MAX_SHARDS, math.ceil(size / SHARD_INPUT_BYTES)))


def partition_events(
    path: str | Path, fmt: str | FormatSpec, work_dir: str | Path, *, n_shards: int | None = None,
    batch_bytes: int = BATCH_BYTES, quarantine_path: str | Path | None = None,
    site: str | None = None, progress: bool = True, workers: int = 1,
) -> tuple[list[Path], IngestReport]:
    """Pass 1: read, check and hash-partition ``path`` by shopper into Arrow IPC files in
    ``work_dir``; return the partition files (empty ones omitted) and the ingest report.
    The file is refused before reading when the estimated peak of both passes (pass 2 with
    ``workers`` processes) is over the limit per file (``memory_limit``)."""
    spec = _spec(fmt)
    if site is not None and not str(site).strip():
        raise ConfigError("site must be a non-empty string")
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or batch_bytes < 1024:
        raise ConfigError(f"batch size must be an integer of at least 1024 bytes, not {batch_bytes!r}")
    p, kind = _open_checked(path)
    shards = _n_shards(p, kind, n_shards)
    size = p.stat().st_size * (4 if kind in ("gzip", "parquet") else 1)
    per_shard = size / 35 / shards  # about 35 bytes of CSV text per event
    # pass 1 holds a batch; pass 2 one partition per worker: whichever is more, not the file
    check_memory(p, max(batch_bytes * BATCH_FACTOR,
                        workers * per_shard * PARTITION_EVENT_BYTES),
                 f"streamed in batches of {batch_bytes:,} bytes into {shards} shards, "
                 f"{workers} at a time")
    work = Path(work_dir)
    (work / "partitions").mkdir(parents=True, exist_ok=True)
    qdir = work / "quarantine-parts"
    if quarantine_path is not None:
        qdir.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        lay, batches = _parquet_batches(p, spec, max(1, batch_bytes // 40))
    else:
        lay, batches = _csv_batches(p, kind, spec, batch_bytes)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    rejected: dict[str, int] = {}
    read = kept = 0
    first_error: SchemaError | None = None
    parts: list[Path] = []
    bar = tqdm(desc="ingest", unit=" events", unit_scale=True, disable=not progress or None)
    try:
        for b, (raw, fields_of, ragged, line) in enumerate(batches):
            if site is not None and "site" in raw:
                del raw["site"]
            n = len(raw["timestamp"])
            try:
                table, reason_of, checks = _validated(p, raw, lay, n, site)
                labels = [name for name, _ in checks]
            except SchemaError as err:  # a whole field unreadable in this batch
                first_error = first_error or err
                labels = ["record batch refused: " + str(err).removeprefix(f"{p}: ")[:160]]
                reason_of = np.ones(n, dtype=np.int16)
                table = None
            counts = np.bincount(reason_of, minlength=len(labels) + 1)
            if ragged:
                rejected["ragged row"] = rejected.get("ragged row", 0) + len(ragged)
            for i, name in enumerate(labels):
                if counts[i + 1]:
                    rejected[name] = rejected.get(name, 0) + int(counts[i + 1])
            read += n + len(ragged)
            if quarantine_path is not None and (b == 0 or counts[1:].any() or ragged):
                rows = np.flatnonzero(reason_of)
                lines = rows + line if kind == "parquet" else _line_numbers(rows, ragged, line, n)
                part = qdir / f"part-{b:06d}.csv"
                _write_quarantine(part, raw, fields_of, rows, reason_of[rows] - 1, labels, lines, ragged)
                parts.append(part)
            if table is not None and table.num_rows:
                kept += table.num_rows
                _append_partitions(work, table, shards, writers)
            bar.update(n + len(ragged))
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    if kept == 0 and first_error is not None:
        raise first_error
    report = IngestReport(
        source=str(p), format=spec.name, rows_read=read, rows_kept=kept,
        rejected=dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        quarantine_path=None if quarantine_path is None else str(quarantine_path))
    if quarantine_path is not None:
        _join_csv(parts, Path(quarantine_path))
        shutil.rmtree(qdir, ignore_errors=True)
    if read == 0:
        logger.warning("%s: no data rows", p)
    _log_summary(report)
    return [work / "partitions" / f"part-{s:05d}.arrow" for s in sorted(writers)], report


def _append_partitions(work: Path, table: pa.Table, shards: int,
                       writers: dict[int, pa.ipc.RecordBatchFileWriter]) -> None:
    """Append each row of ``table`` to the partition file of its shopper's hash."""
    shard = (string_hash(table.column("user_id").combine_chunks()) % np.uint64(shards)).astype(np.uint16)
    order = np.argsort(shard, kind="stable")  # a radix sort of 16-bit keys
    counts = np.bincount(shard, minlength=shards)
    grouped = table.take(pa.array(order))
    start = 0
    for s in np.flatnonzero(counts):
        part = grouped.slice(start, int(counts[s]))
        start += int(counts[s])
        if s not in writers:
            sink = work / "partitions" / f"part-{s:05d}.arrow"
            writers[int(s)] = pa.ipc.new_file(str(sink), table.schema)
        writers[int(s)].write_table(part)


def _join_csv(parts: list[Path], out: Path) -> None:
    """Concatenate CSV files with one header (the first's) into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        for i, part in enumerate(parts):
            with open(part, "rb") as src:
                if i:
                    src.readline()
                shutil.copyfileobj(src, f)


def _tokenize_one(part: Path, out: Path, tok: TokenizerConfig) -> dict:
    """One partition to one tokenised shard directory; its description."""
    with pa.memory_map(str(part)) as src:
        table = pa.ipc.open_file(src).read_all()
    seqs = build_sequences(table, tok)
    del table
    name = part.stem.replace("part", "shard")
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "offsets.npy", seqs.offsets.astype(np.int64))
    for ch, values in seqs.channels.items():
        np.save(d / f"{ch}.npy", values.astype(CHANNEL_DTYPE))
    with pa.OSFile(str(d / "ids.arrow"), "wb") as sink:
        ids = pa.table({"id": pa.array(seqs.ids.tolist(), pa.string())})
        with pa.ipc.new_file(sink, ids.schema) as w:
            w.write_table(ids)
    return {"name": name, "sequences": len(seqs), "events": seqs.n_events}


def tokenize_partitions(partitions: list[Path], out_dir: str | Path, tok: TokenizerConfig,
                        progress: bool = True, workers: int = 1) -> list[dict]:
    """Pass 2: turn each partition into a tokenised shard under ``out_dir`` (``workers``
    processes at a time, each holding one partition); return their descriptions (name,
    sequences, events) in partition order."""
    out = Path(out_dir)
    bar = tqdm(total=len(partitions), desc="tokenise", unit=" shard",
               disable=not progress or None)
    try:
        if workers <= 1 or len(partitions) <= 1:
            shards = []
            for part in partitions:
                shards.append(_tokenize_one(part, out, tok))
                bar.update()
            return shards
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_tokenize_one, part, out, tok) for part in partitions]
            for fut in as_completed(futures):
                fut.result()
                bar.update()
            return [fut.result() for fut in futures]
    finally:
        bar.close()


def stream_ingest(
    path: str | Path, fmt: str | FormatSpec, out_dir: str | Path, tok: TokenizerConfig, *,
    n_shards: int | None = None, batch_bytes: int = BATCH_BYTES,
    quarantine_path: str | Path | None = None, site: str | None = None, progress: bool = True,
    workers: int = 1,
) -> tuple[dict, IngestReport]:
    """Both passes: ``path`` to tokenised shards and ``manifest.json`` in ``out_dir`` (its
    ``partitions/`` work files are removed at the end); return the manifest and the report."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigError(f"workers must be an integer from 1 to 64, not {workers!r}")
    out = Path(out_dir)
    if (out / MANIFEST).exists() or (out.exists() and any(out.glob("shard-*"))):
        raise ConfigError(f"{out}: already holds tokenised shards; choose an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    try:
        parts, report = partition_events(path, fmt, out, n_shards=n_shards, batch_bytes=batch_bytes,
                                         quarantine_path=quarantine_path, site=site,
                                         progress=progress, workers=workers)
        shards = tokenize_partitions(parts, out, tok, progress, workers)
    finally:
        shutil.rmtree(out / "partitions", ignore_errors=True)
    manifest = {
        "source": report.source, "format": report.format, "tokenizer": asdict(tok),
        "channel_dtype": np.dtype(CHANNEL_DTYPE).name, "shards": shards,
        "sequences": sum(s["sequences"] for s in shards), "events": sum(s["events"] for s in shards),
        "report": asdict(report),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest, report
