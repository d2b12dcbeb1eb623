"""Peak memory of a whole process tree (a driver and everything it starts, e.g. Ray's processes).

``TreeMemorySampler(pid)`` samples, in a background thread, the resident set size of ``pid`` and
of all its descendants (psutil, which Ray installs) and keeps the peak of their **sum**. RSS
summed over processes counts pages they share (libraries, Ray's shared-memory object store) once
per process, so it over-states what the tree really holds; ``pss`` (proportional set size, shared
pages split between their users) is sampled too, less often, because reading ``smaps`` is slow.
Every process seen is remembered, so that processes left running afterwards (e.g. a Ray worker
that outlived its driver) can be found even when they were re-parented out of the tree.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

MIB = float(1 << 20)
#: Names that may still change (a process that was starting, or could not be read).
_TRANSIENT = ("?", "python", "python3")
#: The raylet's agents retitle themselves like Ray's workers do.
_RAY_AGENTS = {"ray::DashboardAgent": "dashboard_agent", "ray::RuntimeEnvAgent": "runtime_env_agent"}


@dataclass
class _Seen:
    name: str
    create_time: float
    peak_rss_mb: float = 0.0


@dataclass
class TreeMemory:
    """What a sampler measured (MiB, seconds since the sampler started)."""

    peak_rss_mb: float = 0.0  # peak of the summed RSS of the tree
    peak_at_s: float = 0.0
    peak_processes: int = 0  # processes in the tree at that peak
    peak_by_process: dict[str, float] = field(default_factory=dict)  # at that peak, by role
    peak_pss_mb: float | None = None  # peak of the summed PSS (sampled every pss_every-th time)
    max_processes: int = 0
    samples: int = 0
    interval_s: float = 0.0
    seen: dict[int, _Seen] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the list of pids)."""
        by_name: dict[str, float] = {}
        count: dict[str, int] = {}
        for s in self.seen.values():
            by_name[s.name] = max(by_name.get(s.name, 0.0), s.peak_rss_mb)
            count[s.name] = count.get(s.name, 0) + 1
        return {
            "peak_rss_sum_mb": round(self.peak_rss_mb, 1),
            "peak_pss_sum_mb": None if self.peak_pss_mb is None else round(self.peak_pss_mb, 1),
            "peak_at_s": round(self.peak_at_s, 1),
            "processes_at_peak": self.peak_processes,
            "rss_at_peak_by_process_mb": {k: round(v, 1) for k, v in
                                          sorted(self.peak_by_process.items())},
            "peak_rss_per_process_kind_mb": {k: round(v, 1) for k, v in sorted(by_name.items())},
            "processes_seen_per_kind": dict(sorted(count.items())),
            "max_processes": self.max_processes,
            "processes_seen": len(self.seen),
            "samples": self.samples,
            "interval_s": self.interval_s,
        }


def process_role(proc, root_pid: int | None = None) -> str:
    """A short stable name: ``driver`` (the root), ``ray_worker`` (Ray's actors and idle workers,
    whose titles change as they work), Ray's daemons by script name (its agents by title),
    else the process name."""
    import psutil

    if proc.pid == root_pid:
        return "driver"
    try:
        cmd, name = proc.cmdline(), proc.name()
    except psutil.Error:  # gone, or not ours to inspect
        return "?"
    if cmd and cmd[0].strip() in _RAY_AGENTS:  # daemons with a worker-like title
        return _RAY_AGENTS[cmd[0].strip()]
    if cmd and (cmd[0].startswith("ray::") or any(
            c.endswith(("setup_worker.py", "default_worker.py")) for c in cmd[:4])):
        return "ray_worker"
    for part in cmd[:3]:
        base = part.rsplit("/", 1)[-1]
        if base in ("raylet", "gcs_server") or base.endswith(".py"):
            return base
    return name


class TreeMemorySampler:
    """Sample the summed RSS of ``pid`` and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 10) -> None:
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.result = TreeMemory(interval_s=interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> TreeMemorySampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start sampling in a background thread."""
        self._t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> TreeMemory:
        """Take a last sample, stop the thread and return what was measured."""
        self._stop.set()
        self._thread.join()
        return self.result

    def _tree(self) -> list:
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self, with_pss: bool = False) -> None:
        """One sample of the tree (also called by the thread)."""
        import psutil

        r = self.result
        total, pss_total, by_role, n = 0.0, 0.0, {}, 0
        for proc in self._tree():
            try:
                rss = proc.memory_info().rss / MIB
                pss = proc.memory_full_info().pss / MIB if with_pss else 0.0
                if proc.pid not in r.seen:
                    r.seen[proc.pid] = _Seen(process_role(proc, self.pid), proc.create_time())
            except (psutil.Error, AttributeError):
                continue
            seen = r.seen[proc.pid]
            if seen.name in _TRANSIENT:  # e.g. a Ray worker before its exec
                seen.name = process_role(proc, self.pid)
            seen.peak_rss_mb = max(seen.peak_rss_mb, rss)
            total += rss
            pss_total += pss
            by_role[seen.name] = by_role.get(seen.name, 0.0) + rss
            n += 1
        r.samples += 1
        r.max_processes = max(r.max_processes, n)
        if with_pss and n:
            r.peak_pss_mb = max(r.peak_pss_mb or 0.0, pss_total)
        if total > r.peak_rss_mb:
            r.peak_rss_mb, r.peak_processes, r.peak_by_process = total, n, by_role
            r.peak_at_s = time.perf_counter() - self._t0

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.sample(with_pss=self.pss_every > 0 and i % self.pss_every == 0)
            i += 1
            self._stop.wait(self.interval)
        self.sample()

def still_running(memory: TreeMemory, exclude: tuple[int, ...] = ()) -> list[dict]:
    """Processes seen by a sampler that still run (same pid *and* start time): left behind."""
    import psutil

    left = []
    for pid, s in memory.seen.items():
        if pid in exclude:
            continue
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - s.create_time) < 0.01 and proc.status() != "zombie":
                left.append({"pid": pid, "name": s.name})
        except psutil.Error:
            continue
    return left
