"""The server's round loop: Flower's strategy aggregates; this loop guards, calibrates, checkpoints.

Per round: the strategy configures training and sends it; replies that are errors, declines
(a site at its privacy budget), or carry arrays with NaN/Inf or the wrong names/shapes are
logged and left out; the strategy aggregates the rest. Then every site evaluates the new global
model and sends noisy calibration histograms, a second query collects noisy score histograms for
the federated threshold, and a checkpoint directory is written. A round without a single usable
training reply fails the run (RuntimeError -> non-zero exit), unless every site declined because
its budget is spent, which ends training early with a clear message.

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
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

from seqanom_core.detector import SequenceDetector
from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.calibration_histograms import (
    calibrator_from_histograms,
    threshold_from_histogram,
    threshold_noise,
)
from seqanom_core.federation.privacy_statement import privacy_statement
from seqanom_core.federation.records import as_arrays
from seqanom_core.federation.run_config import RunSettings
from seqanom_core.models import build_model, check_arrays, model_arrays
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.sequences import vocab_sizes
from server import central_dp
from server.checkpoints import (
    list_checkpoints,
    restore_strategy_state,
    save_model_dir,
    strategy_state,
    write_checkpoint,
)
from server.records import to_array_record
from server.secagg import SecAggTraining

log = logging.getLogger(__name__)


def _site(msg: Message) -> str:
    if message_keys.SITE in msg.content:
        return str(msg.content[message_keys.SITE]["name"])
    return f"node-{msg.metadata.src_node_id}"


def _metrics(msg: Message) -> dict[str, float]:
    """The site's scalar metrics (without the aggregation weight the server itself sets)."""
    if message_keys.METRICS not in msg.content:
        return {}
    return {k: float(v) for k, v in msg.content[message_keys.METRICS].items()  # type: ignore[arg-type]
            if k != central_dp.SITE_WEIGHT}


# Site metrics that a weighted mean over sites would misstate (a mean epsilon is no site's
# guarantee): the round log keeps them per site (``sites``); the worst site's cumulative epsilon
# is the record's privacy statement (``privacy``).
PER_SITE_ONLY = frozenset({"epsilon", "delta", "budget", "noise-multiplier", "declined"})


@dataclass
class RoundRecord:
    """What happened in one round (written to round.json and metrics.jsonl)."""

    round: int
    train: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, float] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    threshold: float | None = None
    # how far histogram noise can move the threshold's tail, as a fraction of the shoppers
    threshold_noise: float | None = None
    seconds: float = 0.0
    privacy: dict[str, Any] = field(default_factory=dict)  # the guarantees after this round
    central_accountant: dict[str, Any] | None = None  # Flower's accountant state (resume)


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
        self.stop_reason = ""
        p = settings.privacy
        self.central = strategy if isinstance(strategy, DifferentialPrivacyFixedClippingBase) else None
        if p.central != (self.central is not None and self.central.accountant is not None):
            raise ConfigError(f"privacy-mode {p.mode!r} and the strategy disagree: central DP "
                              "needs the strategy from build_strategy(fed, privacy)")
        self.secagg = SecAggTraining(grid, settings, run_id, list(self.arrays)) if p.secagg else None

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
        for what, theirs, ours in (("model", det.model, self.settings.model),
                                   ("tokenizer", det.tokenizer, self.settings.tokenizer)):
            if theirs != ours:
                wanted = asdict(ours)
                diff = {k: v for k, v in asdict(theirs).items() if wanted[k] != v}
                raise ConfigError(f"{path}: the checkpoint's {what} settings differ from this run "
                                  f"config's ({', '.join(f'{k}={v}' for k, v in diff.items())} "
                                  "there): resume with the run config that wrote it")
        self.arrays = model_arrays(det.model_)
        if restore_strategy_state(self.strategy, path):
            log.info("restored the server optimiser state of round %d", last)
        for _, p in found:
            rec = json.loads((p / "round.json").read_text())
            self.records.append(RoundRecord(**{k: rec[k] for k in asdict(RoundRecord(0))
                                               if k in rec}))
            for name, s in rec.get("sites", {}).items():
                if "epsilon" in s:
                    self.site_epsilon[name] = s["epsilon"]
                    self.site_delta[name] = s.get("delta", 0.0)
        state = self.records[-1].central_accountant
        if self.central is not None:
            if state is None:
                raise ConfigError(f"{path}: no central-DP accountant state to resume from (the "
                                  "run was not in privacy-mode 'local+central')")
            central_dp.restore_accountant(self.central.accountant, state, path)
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
            self._record_site(rec, name, m)
            if m.get("declined", 0.0):
                log.info("round %d: %s declined (privacy budget)", rec.round, name)
                continue
            if message_keys.ARRAYS not in msg.content:
                problems = ["no model arrays"]
            else:
                problems = check_arrays(self.shapes, as_arrays(msg.content[message_keys.ARRAYS]))
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

    def _record_site(self, rec: RoundRecord, name: str, m: dict[str, float]) -> None:
        rec.sites[name] = {"declined": bool(m.get("declined", 0.0)),
                           **{k: v for k, v in m.items() if k != "declined"}}
        if "epsilon" in m:
            self.site_epsilon[name], self.site_delta[name] = m["epsilon"], m.get("delta", 0.0)

    def _all_declined(self, r: int, rec: RoundRecord) -> bool:
        """True when every site declined (budgets spent): a planned stop."""
        if rec.sites and all(s["declined"] for s in rec.sites.values()):
            self.stop_reason = (f"every site declined round {r}: their privacy budgets are "
                                f"spent; training ended after round {r - 1}")
            return True
        return False

    def _train(self, r: int, rec: RoundRecord) -> bool:
        """Training step of round ``r``; False on a planned stop (``self.stop_reason``)."""
        if self.secagg is not None:
            return self._train_secagg(self.secagg, r, rec)
        cfg = ConfigRecord({message_keys.ROUNDS_LEFT: self.fed.num_rounds - r + 1, message_keys.RUN_ID: self.run_id})
        try:
            msgs = list(self.strategy.configure_train(r, to_array_record(self.arrays), cfg,
                                                      self.grid))
        except PrivacyBudgetExhausted as err:
            self.stop_reason = (f"central privacy budget: round {r} would pass central-epsilon "
                                f"{self.settings.privacy.central_epsilon} ({err}); training "
                                f"ended after round {r - 1}")
            return False
        replies = list(self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout))
        usable = self._usable(replies, rec)
        if not usable:
            if self._all_declined(r, rec):
                return False  # nothing released, so nothing is accounted
            raise RuntimeError(
                f"round {r}: no usable training replies ({len(msgs)} sent, {len(replies)} "
                f"received, rejected: {rec.rejected})")
        to_aggregate = usable
        if self.central is not None:
            to_aggregate, padded = central_dp.equal_weight_replies(msgs, usable, self.arrays)
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
        return True

    def _train_secagg(self, secagg: SecAggTraining, r: int, rec: RoundRecord) -> bool:
        """Training step of round ``r`` through SecAgg+: the server only sees the sum."""
        out = secagg.train(r, self.arrays)
        for name, m in out.sites.items():
            self._record_site(rec, name, m)
        if out.all_declined and self._all_declined(r, rec):
            return False
        if out.update is None:
            raise RuntimeError(f"round {r}: secure aggregation produced no aggregate "
                               f"({len(out.sites)} sites answered, {out.failures} failures)")
        self._accept(r, {k: self.arrays[k] + out.update[k] for k in self.arrays})
        trained = [m for m in out.sites.values() if not m.get("declined")]
        n = sum(m.get("num-examples", 0.0) for m in trained)
        rec.train = {"num-examples": n}
        if n > 0 and all("train-loss" in m for m in trained):
            rec.train["train-loss"] = sum(m["train-loss"] * m["num-examples"] for m in trained) / n
        return True

    def _accept(self, r: int, new: dict[str, np.ndarray]) -> None:
        """Make ``new`` the global model after checking its names, shapes and finiteness."""
        problems = check_arrays(self.shapes, new)
        if problems:
            raise RuntimeError(f"round {r}: aggregated model is unusable: {problems}")
        self.arrays = {k: v.astype(self.arrays[k].dtype, copy=False) for k, v in new.items()}

    def _evaluate_and_calibrate(self, r: int, rec: RoundRecord) -> tuple[Any, float]:
        """Site evaluation, federated calibration and threshold for the current global model."""
        arrays = to_array_record(self.arrays)
        msgs = list(self.strategy.configure_evaluate(r, arrays, ConfigRecord(), self.grid))
        replies = [m for m in self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout)
                   if not m.has_error() and message_keys.HISTOGRAMS in m.content]
        if not replies:
            raise RuntimeError(f"round {r}: no site returned an evaluation")
        if self.central is not None:
            central_dp.weight_evaluations(replies)
        agg = self.strategy.aggregate_evaluate(r, replies)
        rec.evaluate = {k: float(v) for k, v in (agg or {}).items()  # type: ignore[arg-type]
                        if k != central_dp.SITE_WEIGHT}
        for msg in replies:
            rec.sites.setdefault(_site(msg), {}).update(
                {f"eval-{k}": v for k, v in _metrics(msg).items()})
        hist = sum(as_arrays(m.content[message_keys.HISTOGRAMS])[message_keys.STAT_HIST] for m in replies)
        n_valid = sum(_metrics(m).get("num-examples", 0.0) for m in replies)
        calibrator = calibrator_from_histograms(np.asarray(hist), n_valid or None)
        # second query: score histograms under the federated calibration
        content = {message_keys.ARRAYS: arrays, message_keys.CONFIG: ConfigRecord({
            message_keys.SERVER_ROUND: r, message_keys.CALIBRATOR: json.dumps(calibrator.to_dict())})}
        queries = [Message(content=RecordDict(content), dst_node_id=m.metadata.src_node_id,
                           message_type=f"{MessageType.QUERY}.{message_keys.SCORE_SUMMARY}")
                   for m in replies]
        answers = [m for m in self.grid.send_and_receive(queries, timeout=self.fed.round_timeout)
                   if not m.has_error() and message_keys.HISTOGRAMS in m.content]
        if not answers:
            raise RuntimeError(f"round {r}: no site returned a score summary")
        score_hist = sum(as_arrays(m.content[message_keys.HISTOGRAMS])[message_keys.SCORE_HIST] for m in answers)
        n_scored = sum(_metrics(m).get("num-examples", 0.0) for m in answers)
        threshold = threshold_from_histogram(np.asarray(score_hist), self.fed.alert_rate,
                                             n_scored or None)
        rec.threshold_noise = threshold_noise(self.fed.calibration_noise, n_scored, len(answers))
        if rec.threshold_noise > self.fed.alert_rate / 2:
            log.warning("round %d: the federated threshold rests on %d validation shoppers; the "
                        "histogram noise moves its tail by about %.1f%% of them, against an "
                        "alert rate of %.1f%%: the model's alert rate may be far from its "
                        "target (more validation shoppers per site, or a higher alert rate)",
                        r, int(n_scored), 100 * rec.threshold_noise, 100 * self.fed.alert_rate)
        return calibrator, threshold

    def _metadata(self, r: int, rec: RoundRecord) -> dict[str, Any]:
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kind": self.settings.model.kind, "source": "events", "federated": True,
                "run_id": self.run_id, "round": r, "strategy": self.fed.strategy,
                "alert_rate": self.fed.alert_rate, "privacy": rec.privacy or self.privacy(r),
                "stop_reason": self.stop_reason,
                "calibration": "federated: noisy per-site histograms of held-out validation "
                               f"shoppers (noise std {self.fed.calibration_noise} counts per bin)",
                "threshold_noise": rec.threshold_noise,
                "round_metrics": {"train": rec.train, "evaluate": rec.evaluate}}

    def privacy(self, rounds_done: int) -> dict[str, Any]:
        """The guarantees the global model carries (per site, and site-level when central)."""
        central = None
        if self.central is not None:
            central = central_dp.guarantee(self.settings.privacy, self.central.accountant)
        return privacy_statement(self.settings, self.site_epsilon, self.site_delta,
                                 rounds_done, central)

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
                log.warning("planned stop: %s", self.stop_reason)
                break
            calibrator, threshold = self._evaluate_and_calibrate(r, rec)
            rec.threshold, rec.seconds = threshold, round(time.time() - t0, 2)
            rec.privacy = self.privacy(r)
            if self.central is not None:
                rec.central_accountant = self.central.accountant.state_dict()
            write_checkpoint(self.root, r, self.settings, self.arrays, calibrator, threshold,
                             self._metadata(r, rec), asdict(rec), strategy_state(self.strategy))
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
            self.records.append(rec)
            log.info("round %d: train %s | evaluate %s | threshold %.3f | %.1f s", r, rec.train,
                     rec.evaluate, threshold, rec.seconds)
        if calibrator is None or threshold is None:
            raise RuntimeError("no round completed: there is no global model to save"
                               + (f" ({self.stop_reason})" if self.stop_reason else ""))
        last = self.records[-1]
        save_model_dir(self.final_model_dir, self.settings, self.arrays, calibrator, threshold,
                       self._metadata(last.round, last))
        log.info("final model: %s", self.final_model_dir)
        return self.records
