"""Per-round checkpoints: a full model directory (``seqanom score --model`` accepts it) + round.json,
and the run's ``metrics.jsonl`` (one round record a line)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from seqanom_core.atomic_files import replaced_dir_on_success
from seqanom_core.config import DetectorConfig, Source
from seqanom_core.detector import SequenceDetector
from seqanom_core.federation.global_model import final_network
from seqanom_core.federation.records import contiguous
from seqanom_core.federation.round_record import RoundRecord
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.scoring import ScoreCalibrator

log = logging.getLogger(__name__)
ROUND_FILE = "round.json"
METRICS_FILE = "metrics.jsonl"  # every round's record, one JSON line each
# the round's global arrays: of an uncalibrated round, and of every round when they are not the
# whole model (a fine-tuning mode: the model directory folds the adapters in)
GLOBAL_FILE = "global_model.safetensors"
STRATEGY_FILE = "strategy_state.safetensors"  # server optimiser moments (FedAdam & co.)
_STRATEGY_ATTRS = ("m_t", "v_t")  # Flower's FedOpt family keeps its moments in these
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")


def save_model_dir(out: Path, settings: RunConfig, arrays: dict[str, np.ndarray],
                   calibrator: ScoreCalibrator, threshold: float, metadata: dict[str, Any]) -> Path:
    """Write a model directory for the global ``arrays`` (atomically: tmp dir, then rename)."""
    model = final_network(settings, arrays)
    cfg = DetectorConfig(settings.tokenizer, settings.model, settings.train, Source.EVENTS)
    det = SequenceDetector.from_parts(cfg, model, calibrator, threshold, metadata, device="cpu",
                                      progress=False)
    with replaced_dir_on_success(out) as tmp:
        det.save(tmp)
    return out


def write_checkpoint(root: Path, server_round: int, settings: RunConfig,
                     arrays: dict[str, np.ndarray], calibrator: ScoreCalibrator | None,
                     threshold: float | None, metadata: dict[str, Any], record: dict[str, Any],
                     strategy_state: dict[str, np.ndarray] | None = None) -> Path:
    """``root/round-NNNN/``: model directory of the round's global model plus ``round.json``;
    a round that was not calibrated (``calibration-every``) keeps its global arrays only
    (``GLOBAL_FILE``): without a calibration it is not a detector yet."""
    out = root / f"round-{server_round:04d}"
    # written in full under a hidden name, then renamed: a kill leaves no half checkpoint
    with replaced_dir_on_success(out, f".{out.name}.partial") as partial:
        calibrated = calibrator is not None and threshold is not None
        if calibrated:  # first: it replaces the directory whole
            save_model_dir(partial, settings, arrays, calibrator, threshold, metadata)
        if not calibrated or settings.train.finetune != "all":
            save_file(contiguous(arrays), str(partial / GLOBAL_FILE))
        if strategy_state:
            save_file(contiguous(strategy_state), str(partial / STRATEGY_FILE))
        (partial / ROUND_FILE).write_text(json.dumps(record, indent=2, default=float))
    return out


def start_metrics_log(root: Path, records: list[RoundRecord]) -> Path:
    """``root/metrics.jsonl`` holding ``records`` (those kept on resume; none: an empty file)."""
    path = root / METRICS_FILE
    root.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    return path


def append_metrics_line(path: Path, record: RoundRecord) -> None:
    """One more round in the metrics log."""
    with path.open("a") as f:
        f.write(json.dumps(asdict(record)) + "\n")


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (round, path), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _ROUND_DIR.match(p.name)
        if m and (p / ROUND_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _innermost(strategy: Any) -> Any:
    """The strategy a wrapper (e.g. Flower's DP wrappers) delegates to, or the strategy itself."""
    seen = 0
    while getattr(strategy, "strategy", None) is not None and seen < 8:
        strategy, seen = strategy.strategy, seen + 1
    return strategy


def strategy_state(strategy: Any) -> dict[str, np.ndarray]:
    """The server optimiser's moments (``m_t/<name>``, ``v_t/<name>``); empty for stateless ones."""
    inner = _innermost(strategy)
    out: dict[str, np.ndarray] = {}
    for attr in _STRATEGY_ATTRS:
        for name, value in (getattr(inner, attr, None) or {}).items():
            out[f"{attr}/{name}"] = np.asarray(value)
    return out


def restore_strategy_state(strategy: Any, checkpoint: Path) -> bool:
    """Put a checkpoint's optimiser moments back into ``strategy``; False when it has none."""
    path = checkpoint / STRATEGY_FILE
    if not path.is_file():
        return False
    inner = _innermost(strategy)
    loaded = load_file(str(path))
    for attr in _STRATEGY_ATTRS:
        part = {k.split("/", 1)[1]: v for k, v in loaded.items() if k.startswith(attr + "/")}
        if part:
            setattr(inner, attr, part)
    return True
