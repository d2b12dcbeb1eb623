"""Benchmarks: each prints one JSON object (machine, parameters, results) on stdout.

Numbers are ratios against a baseline measured in the same run (so they compare across machines
better than absolute times); nothing here asserts on time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine_info() -> dict:
    """Return what the numbers depend on: CPUs, load, library versions."""
    import pyarrow as pa

    info = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": sys.version.split()[0],
        "pyarrow": pa.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    try:
        import opacus

        info["opacus"] = opacus.__version__
    except ImportError:  # pragma: no cover
        info["opacus"] = None
    return info


def _cpu_model() -> str:
    """Return the CPU model name (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _proc_status_mb(key: str) -> float | None:
    """Return a ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB, if readable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this process image. ``getrusage``'s
    ``ru_maxrss`` is used elsewhere, but on Linux it carries the parent's peak over fork+exec, so a
    worker started by a process that had just generated gigabytes would report the parent's peak.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def current_rss_mb() -> float | None:
    """Return this process's current resident set size in MiB (Linux), else None."""
    return _proc_status_mb("VmRSS")


def envelope(bench: str, params: dict, results: dict, wall_s: float | dict, **extra) -> dict:
    """The JSON object every benchmark prints: name, machine, parameters, results, wall time."""
    return {"bench": bench, "machine": machine_info(), "params": params, **extra,
            "results": results, "wall_s": wall_s}


def emit(result: dict, out: str | None) -> None:
    """Print a result as JSON on stdout and, when asked, write it to ``out``."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")


def setup_logging() -> None:
    """Progress goes to stderr only."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")


def run_seqanom(*argv: str) -> None:
    """Run one ``seqanom`` command (``python -m simulation.cli -q ...``) in a subprocess; a
    failure raises with the end of its stderr."""
    cmd = [sys.executable, "-m", "simulation.cli", "-q", *argv]
    logging.getLogger("bench").info("%s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")


def detection_summary(y: Any = None, scores: Any = None, kinds: Any = None, *,
                      evaluation: dict | None = None) -> dict[str, Any]:
    """AUROC, AUPRC, recall at FPR 0.1/0.2/1% and AUROC per kind, rounded to 4 places: computed
    from labels ``y``, ``scores`` and ``kinds``, or taken from a simulate run's
    ``metrics.json`` evaluation entry (``evaluation``)."""
    if evaluation is None:
        from seqanom_core.metrics import auprc, auroc, auroc_per_kind, recall_at_fpr

        evaluation = {"auroc": auroc(y, scores), "auprc": auprc(y, scores),
                      "recall_at_fpr": recall_at_fpr(y, scores),
                      "auroc_per_kind": auroc_per_kind(y, scores, kinds)}
    return {"auroc": round(evaluation["auroc"], 4), "auprc": round(evaluation["auprc"], 4),
            "recall_at_fpr": {k: round(v, 4) for k, v in evaluation["recall_at_fpr"].items()},
            "auroc_per_kind": {k: round(v, 4) for k, v in evaluation["auroc_per_kind"].items()}}
