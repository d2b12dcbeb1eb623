"""Per-round checkpoints: a full model directory (``seqanom score --model`` accepts it) + round.json."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from seqanom_core.config import DetectorConfig
from seqanom_core.detector import SequenceDetector
from seqanom_core.models import build_model, load_arrays
from seqanom_core.run_config import RunSettings
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.sequences import vocab_sizes

log = logging.getLogger(__name__)
ROUND_FILE = "round.json"
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")


def save_model_dir(out: Path, settings: RunSettings, arrays: dict[str, np.ndarray],
                   calibrator: ScoreCalibrator, threshold: float, metadata: dict[str, Any]) -> Path:
    """Write a model directory for the global ``arrays`` (atomically: tmp dir, then rename)."""
    model = build_model(settings.model, vocab_sizes(settings.tokenizer, "events"))
    load_arrays(model, arrays)
    cfg = DetectorConfig(settings.tokenizer, settings.model, settings.train, "events")
    det = SequenceDetector.from_parts(cfg, model, calibrator, threshold, metadata, device="cpu",
                                      progress=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    det.save(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def write_checkpoint(root: Path, server_round: int, settings: RunSettings,
                     arrays: dict[str, np.ndarray], calibrator: ScoreCalibrator, threshold: float,
                     metadata: dict[str, Any], record: dict[str, Any]) -> Path:
    """``root/round-NNNN/``: model directory of the round's global model plus ``round.json``."""
    out = root / f"round-{server_round:04d}"
    root.mkdir(parents=True, exist_ok=True)
    save_model_dir(out, settings, arrays, calibrator, threshold, metadata)
    (out / ROUND_FILE).write_text(json.dumps(record, indent=2, default=float))
    return out


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
