"""The server's round loop: Flower's strategy aggregates; this loop guards, calibrates, checkpoints.

Per round: the strategy configures training and sends it; replies that are errors, declines
(a site at its privacy budget), or carry arrays with NaN/Inf or the wrong names/shapes are
logged and left out; the strategy aggregates the rest. Then every site evaluates the new global
model and sends noisy calibration histograms, a second query collects noisy score histograms for
the federated threshold, and a checkpoint directory is written. A round without a single usable
training reply fails the run (RuntimeError -> non-zero exit), unless every site declined because
its budget is spent, which ends training early with a clear message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from client.records import from_array_record, to_array_record
from seqanom_core import messages as K
from seqanom_core.calibration_summary import calibrator_from_histograms, threshold_from_histogram
from seqanom_core.detector import SequenceDetector
from seqanom_core.models import build_model, check_arrays, model_arrays
from seqanom_core.privacy import UNIT
from seqanom_core.run_config import RunSettings
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.sequences import vocab_sizes
from server.checkpoints import (
    list_checkpoints,
    restore_strategy_state,
    save_model_dir,
    strategy_state,
    write_checkpoint,
)

log = logging.getLogger(__name__)


def _site(msg: Message) -> str:
    if K.SITE in msg.content:
        return str(msg.content[K.SITE]["name"])
    return f"node-{msg.metadata.src_node_id}"


def _metrics(msg: Message) -> dict[str, float]:
    if K.METRICS not in msg.content:
        return {}
    return {k: float(v) for k, v in msg.content[K.METRICS].items()}  # type: ignore[arg-type]


@dataclass
class RoundRecord:
    """What happened in one round (written to round.json and metrics.jsonl)."""

    round: int
    train: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, float] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    threshold: float | None = None
    seconds: float = 0.0


class FederatedRun:
    """Run ``settings.federation.num_rounds`` rounds of ``strategy`` over ``grid``."""

    def __init__(self, grid: Grid, strategy: Strategy, settings: RunSettings, run_id: str,
                 final_model_dir: Path | None = None) -> None:
        self.grid, self.strategy, self.settings, self.run_id = grid, strategy, settings, run_id
        self.fed = settings.federation
        self.root = Path(self.fed.checkpoint_dir)
        self.final_model_dir = final_model_dir or self.root / "final"
        torch.manual_seed(settings.train.seed)  # the initial global model: same seed, same run
        model = build_model(settings.model, vocab_sizes(settings.tokenizer, "events"))
        self.arrays = model_arrays(model)
        self.shapes = {k: tuple(v.shape) for k, v in self.arrays.items()}
        self.records: list[RoundRecord] = []
        self.site_epsilon: dict[str, float] = {}
        self.site_delta: dict[str, float] = {}

    # ----------------------------------------------------------------- resume
    def _resume(self) -> tuple[int, ScoreCalibrator | None, float | None]:
        """Load the latest checkpoint when resuming: (last completed round (0: none), its
        calibrator, its threshold)."""
        found = list_checkpoints(self.root)
        if not self.fed.resume or not found:
            if found and not self.fed.resume:
                log.warning("%s already holds checkpoints; they will be overwritten (set "
                            "resume=true to continue instead)", self.root)
            return 0, None, None
        last, path = found[-1]
        det = SequenceDetector.load(path, device="cpu", progress=False)
        self.arrays = model_arrays(det.model_)
        if restore_strategy_state(self.strategy, path):
            log.info("restored the server optimiser state of round %d", last)
        for _, p in found:
            rec = json.loads((p / "round.json").read_text())
            self.records.append(RoundRecord(**{k: rec[k] for k in asdict(RoundRecord(0))}))
            for name, s in rec.get("sites", {}).items():
                if "epsilon" in s:
                    self.site_epsilon[name] = s["epsilon"]
                    self.site_delta[name] = s.get("delta", 0.0)
        log.info("resuming from %s (round %d of %d)", path, last, self.fed.num_rounds)
        return last, det.calibrator_, det.threshold_

    # ----------------------------------------------------------------- one round
    def _usable(self, replies: Iterable[Message], rec: RoundRecord) -> list[Message]:
        """Training replies that may be aggregated; everything else is logged in ``rec``."""
        usable = []
        for msg in replies:
            if msg.has_error():
                rec.rejected.append({"site": f"node-{msg.metadata.src_node_id}",
                                     "reason": f"error: {msg.error.reason}"})
                log.warning("round %d: node %d failed: %s", rec.round, msg.metadata.src_node_id,
                            msg.error.reason)
                continue
            name, m = _site(msg), _metrics(msg)
            rec.sites[name] = {"declined": bool(m.get("declined", 0.0)),
                               **{k: v for k, v in m.items() if k != "declined"}}
            if "epsilon" in m:
                self.site_epsilon[name], self.site_delta[name] = m["epsilon"], m.get("delta", 0.0)
            if m.get("declined", 0.0):
                log.info("round %d: %s declined (privacy budget)", rec.round, name)
                continue
            if K.ARRAYS not in msg.content:
                problems = ["no model arrays"]
            else:
                problems = check_arrays(self.shapes, from_array_record(msg.content[K.ARRAYS]))
            if "num-examples" not in m or not np.isfinite(m["num-examples"]) or m["num-examples"] <= 0:
                problems.append("num-examples missing or not positive")
            if problems:
                reason = "; ".join(problems)
                rec.rejected.append({"site": name, "reason": reason})
                rec.sites[name]["rejected"] = reason
                log.warning("round %d: update from %s rejected: %s", rec.round, name, reason)
                continue
            usable.append(msg)
        return usable

    def _train(self, r: int, rec: RoundRecord) -> bool:
        """Training step of round ``r``; False when every site declined (budgets spent)."""
        cfg = ConfigRecord({K.ROUNDS_LEFT: self.fed.num_rounds - r + 1, K.RUN_ID: self.run_id})
        msgs = list(self.strategy.configure_train(r, to_array_record(self.arrays), cfg, self.grid))
        replies = list(self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout))
        usable = self._usable(replies, rec)
        if not usable:
            if rec.sites and all(s["declined"] for s in rec.sites.values()):
                return False
            raise RuntimeError(
                f"round {r}: no usable training replies ({len(msgs)} sent, {len(replies)} "
                f"received, rejected: {rec.rejected})")
        agg, metrics = self.strategy.aggregate_train(r, usable)
        if agg is None:
            raise RuntimeError(f"round {r}: the strategy aggregated nothing")
        new = from_array_record(agg)
        problems = check_arrays(self.shapes, new)
        if problems:
            raise RuntimeError(f"round {r}: aggregated model is unusable: {problems}")
        self.arrays = {k: v.astype(self.arrays[k].dtype, copy=False) for k, v in new.items()}
        rec.train = {k: float(v) for k, v in (metrics or {}).items()}  # type: ignore[arg-type]
        return True

    def _evaluate_and_calibrate(self, r: int, rec: RoundRecord) -> tuple[Any, float]:
        """Site evaluation, federated calibration and threshold for the current global model."""
        arrays = to_array_record(self.arrays)
        msgs = list(self.strategy.configure_evaluate(r, arrays, ConfigRecord(), self.grid))
        replies = [m for m in self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout)
                   if not m.has_error() and K.HISTOGRAMS in m.content]
        if not replies:
            raise RuntimeError(f"round {r}: no site returned an evaluation")
        agg = self.strategy.aggregate_evaluate(r, replies)
        rec.evaluate = {k: float(v) for k, v in (agg or {}).items()}  # type: ignore[arg-type]
        for msg in replies:
            rec.sites.setdefault(_site(msg), {}).update(
                {f"eval-{k}": v for k, v in _metrics(msg).items()})
        hist = sum(from_array_record(m.content[K.HISTOGRAMS])[K.STAT_HIST] for m in replies)
        n_valid = sum(_metrics(m).get("num-examples", 0.0) for m in replies)
        calibrator = calibrator_from_histograms(np.asarray(hist), n_valid or None)
        # second query: score histograms under the federated calibration
        content = {K.ARRAYS: arrays, K.CONFIG: ConfigRecord({
            K.SERVER_ROUND: r, K.CALIBRATOR: json.dumps(calibrator.to_dict())})}
        queries = [Message(content=RecordDict(content), dst_node_id=m.metadata.src_node_id,
                           message_type=f"{MessageType.QUERY}.{K.SCORE_SUMMARY}")
                   for m in replies]
        answers = [m for m in self.grid.send_and_receive(queries, timeout=self.fed.round_timeout)
                   if not m.has_error() and K.HISTOGRAMS in m.content]
        if not answers:
            raise RuntimeError(f"round {r}: no site returned a score summary")
        score_hist = sum(from_array_record(m.content[K.HISTOGRAMS])[K.SCORE_HIST] for m in answers)
        n_scored = sum(_metrics(m).get("num-examples", 0.0) for m in answers)
        threshold = threshold_from_histogram(np.asarray(score_hist), self.fed.alert_rate,
                                             n_scored or None)
        return calibrator, threshold

    def _metadata(self, r: int, rec: RoundRecord) -> dict[str, Any]:
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kind": self.settings.model.kind, "source": "events", "federated": True,
                "run_id": self.run_id, "round": r, "strategy": self.fed.strategy,
                "alert_rate": self.fed.alert_rate, "privacy": self.privacy(r),
                "calibration": "federated: noisy per-site histograms of held-out validation "
                               f"shoppers (noise std {self.fed.calibration_noise} counts per bin)",
                "round_metrics": {"train": rec.train, "evaluate": rec.evaluate}}

    def privacy(self, rounds_done: int) -> dict[str, Any]:
        """The guarantee the global model carries, per site, stated exactly."""
        dp = self.settings.train.dp
        if dp is None:
            return {"dp": False}
        return {"dp": True, "unit": UNIT, "epsilon": max(self.site_epsilon.values(), default=0.0),
                "epsilon_per_site": dict(self.site_epsilon), "delta_per_site": dict(self.site_delta),
                "delta": max(self.site_delta.values(), default=None),
                "budget": self.settings.budget, "rounds": rounds_done,
                "accountant": "Opacus RDP accountant per site, cumulative over the site's ledger "
                              "(all runs it took part in), Poisson sampling",
                "max_grad_norm": dp.max_grad_norm,
                "server_saw_individual_updates": True,
                "covers": "model weights sent by each site; the calibration histograms are "
                          "noised but not accounted in epsilon"}

    # ----------------------------------------------------------------- main
    def run(self) -> list[RoundRecord]:
        """All rounds (continuing after the latest checkpoint when resuming)."""
        start, calibrator, threshold = self._resume()
        if start >= self.fed.num_rounds:
            log.info("all %d rounds already done", self.fed.num_rounds)
        log_path = self.root / "metrics.jsonl"
        self.root.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in self.records))
        for r in range(start + 1, self.fed.num_rounds + 1):
            t0 = time.time()
            rec = RoundRecord(round=r)
            log.info("round %d/%d", r, self.fed.num_rounds)
            if not self._train(r, rec):
                log.warning("round %d: every site declined (privacy budgets spent); training "
                            "ends after round %d", r, r - 1)
                break
            calibrator, threshold = self._evaluate_and_calibrate(r, rec)
            rec.threshold, rec.seconds = threshold, round(time.time() - t0, 2)
            write_checkpoint(self.root, r, self.settings, self.arrays, calibrator, threshold,
                             self._metadata(r, rec), asdict(rec), strategy_state(self.strategy))
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
            self.records.append(rec)
            log.info("round %d: train %s | evaluate %s | threshold %.3f | %.1f s", r, rec.train,
                     rec.evaluate, threshold, rec.seconds)
        if calibrator is None or threshold is None:
            raise RuntimeError("no round completed: there is no global model to save")
        last = self.records[-1]
        save_model_dir(self.final_model_dir, self.settings, self.arrays, calibrator, threshold,
                       self._metadata(last.round, last))
        log.info("final model: %s", self.final_model_dir)
        return self.records
