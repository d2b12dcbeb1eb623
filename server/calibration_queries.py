"""A round's federated calibration: two queries to the sites, nothing per shopper.

Query 1 (the strategy's evaluate step): every site sends noisy per-statistic histograms of the
new global model (its own measurements of the model stay in its log); the server pools them into
a ``ScoreCalibrator``; the number of shoppers behind them is estimated from the sites' noisy
training counts (exact counts are not released). A site whose budget cannot pay declines.
Query 2 (``score_summary``): the sites that answered get that calibrator and send a noisy
histogram of their calibration shoppers' scores under it; the server pools them into the
threshold. The arithmetic: ``seqanom_core.federation.pooled_calibration``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from seqanom_core.federation import message_keys
from seqanom_core.federation.pooled_calibration import (
    PooledThreshold,
    calibration_total,
    pooled_calibrator,
    pooled_threshold,
)
from seqanom_core.federation.records import as_arrays
from seqanom_core.federation.round_record import RoundRecord, SiteGuarantees
from seqanom_core.federation.run_config import RunConfig
from seqanom_core.federation.site_policy import refusal_text
from seqanom_core.scoring import ScoreCalibrator
from server import central_dp
from server.records import to_array_record
from server.round_replies import site_metrics, site_name

log = logging.getLogger(__name__)


class CalibrationQueries:
    """Evaluation, calibrator and threshold of each round's global model over ``grid``."""

    def __init__(self, grid: Grid, strategy: Strategy, settings: RunConfig,
                 central: bool, run_id: str, guarantees: SiteGuarantees) -> None:
        self.grid, self.strategy, self.settings, self.run_id = grid, strategy, settings, run_id
        self.fed = settings.federation
        self.central = central  # central DP: evaluation metrics averaged by validation shoppers
        self.guarantees = guarantees  # each release raises the sites' epsilon

    def run(self, r: int, arrays: dict[str, np.ndarray],
            rec: RoundRecord) -> tuple[ScoreCalibrator, float]:
        """Both queries for the global ``arrays`` of round ``r``; metrics and noise go to ``rec``."""
        record = to_array_record(arrays)
        replies = self._evaluate(r, record, rec)
        calibrator = pooled_calibrator(
            [as_arrays(m.content[message_keys.HISTOGRAMS])[message_keys.STAT_HIST] for m in replies],
            self._total(replies))
        answers = self._score_summaries(r, record, calibrator, replies)
        pooled = pooled_threshold(
            [as_arrays(m.content[message_keys.HISTOGRAMS])[message_keys.SCORE_HIST] for m in answers],
            [site_metrics(m).get("calibration-noise", self.fed.calibration_noise) for m in answers],
            self.fed.alert_rate, self._total(answers))
        rec.threshold_noise = pooled.noise
        self._warn_if_unreliable(r, pooled)
        return calibrator, pooled.threshold

    def _evaluate(self, r: int, record: ArrayRecord, rec: RoundRecord) -> list[Message]:
        """Query 1 through the strategy: the sites' evaluation replies with histograms."""
        config = ConfigRecord({message_keys.SERVER_ROUND: r, message_keys.RUN_ID: self.run_id})
        msgs = list(self.strategy.configure_evaluate(r, record, config, self.grid))
        replies = self._answers(msgs)
        if not replies:
            raise RuntimeError(f"round {r}: no site returned an evaluation")
        if self.central:
            central_dp.weight_evaluations(replies)
        agg = self.strategy.aggregate_evaluate(r, replies)
        rec.evaluate = {k: float(v) for k, v in (agg or {}).items()  # type: ignore[arg-type]
                        if k != central_dp.SITE_WEIGHT}
        for msg in replies:
            rec.sites.setdefault(site_name(msg), {}).update(
                {f"eval-{k}": v for k, v in site_metrics(msg).items()})
        return replies

    def _score_summaries(self, r: int, record: ArrayRecord, calibrator: ScoreCalibrator,
                         replies: list[Message]) -> list[Message]:
        """Query 2: each site that answered query 1 scores under the federated ``calibrator``."""
        config = ConfigRecord({message_keys.SERVER_ROUND: r, message_keys.RUN_ID: self.run_id,
                               message_keys.CALIBRATOR: json.dumps(calibrator.to_dict())})
        content = {message_keys.ARRAYS: record, message_keys.CONFIG: config}
        queries = [Message(content=RecordDict(content), dst_node_id=m.metadata.src_node_id,
                           message_type=f"{MessageType.QUERY}.{message_keys.SCORE_SUMMARY}")
                   for m in replies]
        answers = self._answers(queries)
        if not answers:
            raise RuntimeError(f"round {r}: no site returned a score summary")
        return answers

    def _total(self, replies: list[Message]) -> float | None:
        """The shoppers behind the replies' histograms: without DP the pooled histograms' own
        root count (noise 0.5 per site); under DP an estimate from the sites' noisy training
        counts (the root count then carries the histograms' far larger noise)."""
        if self.settings.train.dp is None:
            return None
        return calibration_total([site_metrics(m).get("num-examples", 0.0) for m in replies],
                                 self.settings.validation_fraction,
                                 self.settings.calibrates_on_all)

    def _answers(self, msgs: list[Message]) -> list[Message]:
        """The replies to ``msgs`` that carry histograms (errors and declines left out); every
        site's epsilon after its release is kept."""
        out = []
        for m in self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout):
            if m.has_error():
                continue
            self.guarantees.note(site_name(m), site_metrics(m))
            if message_keys.HISTOGRAMS in m.content:
                out.append(m)
            elif site_metrics(m).get("declined-policy"):
                log.warning("%s declined a calibration query by its own privacy policy: %s",
                            site_name(m), refusal_text(site_metrics(m)["declined-policy"]))
            else:
                log.info("%s declined a calibration query (privacy budget)", site_name(m))
        return out

    def _warn_if_unreliable(self, r: int, pooled: PooledThreshold) -> None:
        if pooled.unreliable(self.fed.alert_rate):
            log.warning("round %d: the federated threshold rests on about %d calibration "
                        "shoppers; the histogram noise moves its tail by up to about %.1f%% of "
                        "them, against an alert rate of %.1f%%: the model's alert rate may "
                        "stray from its target (more shoppers per site, a larger "
                        "calibration-share, or a higher alert rate)",
                        r, int(pooled.shoppers), 100 * pooled.noise, 100 * self.fed.alert_rate)
