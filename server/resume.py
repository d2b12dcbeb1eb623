"""Resuming a federated run (``resume=true``) from its latest checkpoint.

The latest complete checkpoint gives the global model, its calibrator and threshold; every
checkpoint's ``round.json`` gives back the round records (and from them each site's cumulative
epsilon); the server optimiser's moments and, under central DP, Flower's accountant state are
restored into the strategy. A checkpoint written under other model or tokenizer settings, or a
central-DP run resumed from one without an accountant state, is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from safetensors.numpy import load_file

from seqanom_core.detector import WEIGHTS, SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.federation.round_record import RoundRecord
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.models import check_arrays, model_arrays
from seqanom_core.scoring import ScoreCalibrator
from server import central_dp
from server.checkpoints import GLOBAL_FILE, ROUND_FILE, list_checkpoints, restore_strategy_state

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where a resumed run continues: the last completed round and what it left behind."""

    last_round: int
    arrays: dict[str, np.ndarray]  # the global model after ``last_round``
    records: list[RoundRecord]  # every completed round, oldest first
    calibrator: ScoreCalibrator | None  # None: that round was not calibrated
    threshold: float | None


def resume_point(root: Path, settings: RunConfig, strategy: Strategy,
                 central: DifferentialPrivacyFixedClippingBase | None,
                 shapes: dict[str, tuple[int, ...]]) -> ResumePoint | None:
    """The latest checkpoint under ``root`` when resuming (None: start at round 1), with the
    strategy's optimiser and central accountant state restored from it."""
    found = list_checkpoints(root)
    if not settings.federation.resume or not found:
        if found and not settings.federation.resume:
            log.warning("%s already holds checkpoints; they will be overwritten (set "
                        "resume=true to continue instead)", root)
        return None
    last, path = found[-1]
    calibrator, threshold, arrays = None, None, None
    if (path / GLOBAL_FILE).is_file():  # an uncalibrated round, or a fine-tuning mode's arrays
        arrays = dict(load_file(str(path / GLOBAL_FILE)))
        problems = check_arrays(shapes, arrays)
        if problems:
            raise ConfigError(f"{path}: the checkpoint's model differs from this run config's "
                              f"({problems}): resume with the run config that wrote it")
    if (path / WEIGHTS).is_file():  # a calibrated round: a model directory
        det = SequenceDetector.load(path, device="cpu", progress=False)
        _check_same_settings(det, settings, path)
        arrays = model_arrays(det.network_) if arrays is None else arrays
        calibrator, threshold = det.calibrator_, det.threshold_
    if arrays is None:
        raise ConfigError(f"{path}: neither a model directory nor {GLOBAL_FILE}: not a "
                          f"checkpoint this server wrote")
    if restore_strategy_state(strategy, path):
        log.info("restored the server optimiser state of round %d", last)
    records = [RoundRecord.from_json(json.loads((p / ROUND_FILE).read_text())) for _, p in found]
    if central is not None:
        _restore_central_accountant(central, records[-1].central_accountant, path)
    log.info("resuming from %s (round %d of %d)", path, last, settings.federation.num_rounds)
    return ResumePoint(last, arrays, records, calibrator, threshold)


def _check_same_settings(det: SequenceDetector, settings: RunConfig, path: Path) -> None:
    """A checkpoint continues only under the model and tokenizer settings that wrote it."""
    for what, theirs, ours in (("model", det.model_config, settings.model),
                               ("tokenizer", det.tokenizer_config, settings.tokenizer)):
        if theirs != ours:
            wanted = asdict(ours)
            diff = {k: v for k, v in asdict(theirs).items() if wanted[k] != v}
            raise ConfigError(f"{path}: the checkpoint's {what} settings differ from this run "
                              f"config's ({', '.join(f'{k}={v}' for k, v in diff.items())} "
                              "there): resume with the run config that wrote it")


def _restore_central_accountant(central: DifferentialPrivacyFixedClippingBase,
                                state: dict[str, Any] | None, path: Path) -> None:
    if state is None:
        raise ConfigError(f"{path}: no central-DP accountant state to resume from (the "
                          "run was not in privacy-mode 'local+central')")
    central_dp.restore_accountant(central.accountant, state, path)
