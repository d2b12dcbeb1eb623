"""The server's round loop: Flower's strategy aggregates; this loop guards, calibrates, checkpoints.

Per round: the strategy configures training and sends it; replies that are errors, declines
(a site at its privacy budget), or carry arrays with NaN/Inf or the wrong names/shapes are
logged and left out (``server/round_replies.py``); the strategy aggregates the rest. After the
last round (and every ``calibration-every`` rounds) every site sends noisy calibration histograms
of the new global model, and a second query collects noisy score histograms for the federated
threshold (``server/calibration_queries.py``): each is a release the sites account. A checkpoint
directory is written every round (``server/checkpoints.py``: a model directory when the round
was calibrated, the global arrays otherwise; ``resume=true`` continues from the latest,
``server/resume.py``). A planned stop after an uncalibrated round calibrates that round's
model. A round without a single usable training reply fails the run (RuntimeError -> non-zero
exit), unless every site declined because its budget is spent, which ends training early with
a clear message.

Privacy modes (``privacy-mode``): ``local`` as above; ``local+central`` wraps the strategy in
Flower's central-DP wrapper (``server/central_dp.py``): every sampled site counts with weight 1,
a missing update counts as a null update, and when the next round would pass ``central-epsilon``
the run stops *before* sending it; ``local+secagg`` runs the training step through Flower's
SecAgg+ (``server/secagg.py``). Both planned stops (every site's budget spent, the central
budget spent) are normal ends: the checkpoints and the final model of the last completed round
are kept, the reason is logged and written to the model's metadata, and the ServerApp returns
normally (exit 0). Only a stop before any round completed is an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.calibration_budget import calibration_rounds
from seqanom_core.federation.global_model import initial_global_arrays
from seqanom_core.federation.privacy_statement import privacy_statement
from seqanom_core.federation.records import as_arrays
from seqanom_core.federation.round_record import (
    PER_SITE_ONLY,
    RoundRecord,
    SiteGuarantees,
    model_metadata,
    weighted_train_metrics,
)
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.models import check_arrays
from seqanom_core.scoring import ScoreCalibrator
from server import central_dp
from server.calibration_queries import CalibrationQueries
from server.checkpoints import (
    append_metrics_line,
    save_model_dir,
    start_metrics_log,
    strategy_state,
    write_checkpoint,
)
from server.records import to_array_record
from server.resume import resume_point
from server.round_replies import usable_training_replies
from server.secagg import SecAggTraining

log = logging.getLogger(__name__)


class FederatedRun:
    """Run ``settings.federation.num_rounds`` rounds of ``strategy`` over ``grid``."""

    def __init__(self, grid: Grid, strategy: Strategy, settings: RunConfig, run_id: str,
                 final_model_dir: Path | None = None) -> None:
        self.grid, self.strategy, self.settings, self.run_id = grid, strategy, settings, run_id
        self.fed = settings.federation
        self.root = Path(self.fed.checkpoint_dir)
        self.final_model_dir = final_model_dir or self.root / "final"
        self.arrays = initial_global_arrays(settings)
        self.shapes = {k: tuple(v.shape) for k, v in self.arrays.items()}
        self.records: list[RoundRecord] = []
        self.guarantees = SiteGuarantees()
        self.stop_reason = ""
        p = settings.privacy
        self.central = strategy if isinstance(strategy, DifferentialPrivacyFixedClippingBase) else None
        if p.central != (self.central is not None and self.central.accountant is not None):
            raise ConfigError(f"privacy-mode {p.mode!r} and the strategy disagree: central DP "
                              "needs the strategy from build_strategy(fed, privacy)")
        self.secagg = SecAggTraining(grid, settings, run_id, list(self.arrays)) if p.secagg else None
        self.calibration = CalibrationQueries(grid, strategy, settings, self.central is not None,
                                              run_id, self.guarantees)

    def _resume(self) -> tuple[int, ScoreCalibrator | None, float | None]:
        """Continue from the latest checkpoint when resuming: (last completed round (0: none),
        its calibrator and threshold, None when that round was not calibrated)."""
        point = resume_point(self.root, self.settings, self.strategy, self.central, self.shapes)
        if point is None:
            return 0, None, None
        self.arrays = point.arrays
        self.records.extend(point.records)
        self.guarantees = SiteGuarantees.from_records(point.records)
        self.calibration.guarantees = self.guarantees
        return point.last_round, point.calibrator, point.threshold

    # ----------------------------------------------------------------- training step
    def _train(self, r: int, rec: RoundRecord) -> bool:
        """Training step of round ``r``; False on a planned stop (``self.stop_reason``)."""
        rec.message_model_bytes = int(sum(a.nbytes for a in self.arrays.values()))
        if self.secagg is not None:
            return self._train_secagg(self.secagg, r, rec)
        cfg = ConfigRecord({message_keys.ROUNDS_LEFT: self.fed.num_rounds - r + 1,
                            message_keys.RUN_ID: self.run_id})
        try:
            msgs = list(self.strategy.configure_train(r, to_array_record(self.arrays), cfg,
                                                      self.grid))
        except PrivacyBudgetExhausted as err:
            self.stop_reason = (f"central privacy budget: round {r} would pass central-epsilon "
                                f"{self.settings.privacy.central_epsilon} ({err}); training "
                                f"ended after round {r - 1}")
            return False
        replies = list(self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout))
        usable = usable_training_replies(replies, rec, self.shapes, self.guarantees)
        if not usable:
            if self._all_declined(rec):
                return False  # nothing released, so nothing is accounted
            raise RuntimeError(
                f"round {r}: no usable training replies ({len(msgs)} sent, {len(replies)} "
                f"received, rejected: {rec.rejected})")
        self._aggregate(r, msgs, usable, rec)
        return True

    def _aggregate(self, r: int, sent: list[Message], usable: list[Message],
                   rec: RoundRecord) -> None:
        """The strategy's aggregate of the usable replies becomes the global model."""
        to_aggregate = usable
        if self.central is not None:
            to_aggregate, padded = central_dp.equal_weight_replies(sent, usable, self.arrays)
            if padded:
                log.info("round %d: %d sampled site(s) counted as null updates (central DP keeps "
                         "its denominator)", r, len(padded))
        agg, metrics = self.strategy.aggregate_train(r, to_aggregate)
        if agg is None:
            raise RuntimeError(f"round {r}: the strategy aggregated nothing")
        self._accept(r, as_arrays(agg))
        if self.central is not None:  # train metrics of the sites that trained, not of null updates
            metrics = self.central.strategy.train_metrics_aggr_fn(
                [m.content for m in usable], "num-examples")
        rec.train = {k: float(v) for k, v in (metrics or {}).items()  # type: ignore[arg-type]
                     if k != central_dp.SITE_WEIGHT and k not in PER_SITE_ONLY}

    def _train_secagg(self, secagg: SecAggTraining, r: int, rec: RoundRecord) -> bool:
        """Training step of round ``r`` through SecAgg+: the server only sees the sum."""
        out = secagg.train(r, self.arrays)
        for name, m in out.sites.items():
            rec.note_site(name, m)
            self.guarantees.note(name, m)
        if out.all_declined and self._all_declined(rec):
            return False
        if out.update is None:
            raise RuntimeError(f"round {r}: secure aggregation produced no aggregate "
                               f"({len(out.sites)} sites answered, {out.failures} failures)")
        self._accept(r, {k: self.arrays[k] + out.update[k] for k in self.arrays})
        rec.train = weighted_train_metrics(out.sites)
        return True

    def _all_declined(self, rec: RoundRecord) -> bool:
        """True when every site declined (budgets spent): a planned stop (``self.stop_reason``)."""
        reason = rec.declined_stop_reason()
        if reason:
            self.stop_reason = reason
        return bool(reason)

    def _accept(self, r: int, new: dict[str, np.ndarray]) -> None:
        """Make ``new`` the global model after checking its names, shapes and finiteness."""
        problems = check_arrays(self.shapes, new)
        if problems:
            raise RuntimeError(f"round {r}: aggregated model is unusable: {problems}")
        self.arrays = {k: v.astype(self.arrays[k].dtype, copy=False) for k, v in new.items()}

    # ----------------------------------------------------------------- what a round leaves
    def _metadata(self, rec: RoundRecord) -> dict[str, Any]:
        return model_metadata(self.settings, self.run_id, rec,
                              rec.privacy or self.privacy(rec.round), self.stop_reason)

    def privacy(self, rounds_done: int) -> dict[str, Any]:
        """The guarantees the global model carries (per site, and site-level when central)."""
        central = None
        if self.central is not None:
            central = central_dp.guarantee(self.settings.privacy, self.central.accountant)
        return privacy_statement(self.settings, self.guarantees.epsilon, self.guarantees.delta,
                                 rounds_done, central, self.guarantees.by_kind)

    def _checkpoint(self, rec: RoundRecord, calibrator: ScoreCalibrator | None,
                    threshold: float | None) -> None:
        """The round's privacy statement, then its checkpoint directory (with a model directory
        when the round was calibrated, else the global arrays only)."""
        rec.privacy = self.privacy(rec.round)
        if self.central is not None:
            rec.central_accountant = self.central.accountant.state_dict()
        write_checkpoint(self.root, rec.round, self.settings, self.arrays, calibrator, threshold,
                         self._metadata(rec), asdict(rec), strategy_state(self.strategy))

    def _calibrate(self, rec: RoundRecord) -> tuple[ScoreCalibrator, float]:
        """Both calibration queries for the current global model, noted in ``rec``."""
        calibrator, threshold = self.calibration.run(rec.round, self.arrays, rec)
        rec.threshold = threshold
        return calibrator, threshold

    # ----------------------------------------------------------------- main
    def run(self) -> list[RoundRecord]:
        """All rounds (continuing after the latest checkpoint when resuming)."""
        start, calibrator, threshold = self._resume()
        if start >= self.fed.num_rounds:
            log.info("all %d rounds already done", self.fed.num_rounds)
        calibrate_after = set(calibration_rounds(self.fed))
        metrics_log = start_metrics_log(self.root, self.records)
        for r in range(start + 1, self.fed.num_rounds + 1):
            t0 = time.time()
            rec = RoundRecord(round=r)
            log.info("round %d/%d", r, self.fed.num_rounds)
            if not self._train(r, rec):
                log.warning("planned stop: %s", self.stop_reason)
                break
            calibrator, threshold = self._calibrate(rec) if r in calibrate_after else (None, None)
            rec.seconds = round(time.time() - t0, 2)
            self._checkpoint(rec, calibrator, threshold)
            append_metrics_line(metrics_log, rec)
            self.records.append(rec)
            log.info("round %d: train %s | evaluate %s | threshold %s | %.1f s", r, rec.train,
                     rec.evaluate, "-" if threshold is None else f"{threshold:.3f}", rec.seconds)
        if (calibrator is None or threshold is None) and self.records:
            # a planned stop after an uncalibrated round: its model is the final one
            last = self.records[-1]
            calibrator, threshold = self._calibrate(last)
            self._checkpoint(last, calibrator, threshold)
            append_metrics_line(metrics_log, last)
        if calibrator is None or threshold is None:
            raise RuntimeError("no round completed: there is no global model to save"
                               + (f" ({self.stop_reason})" if self.stop_reason else ""))
        last = self.records[-1]
        save_model_dir(self.final_model_dir, self.settings, self.arrays, calibrator, threshold,
                       self._metadata(last))
        log.info("final model: %s", self.final_model_dir)
        return self.records
