"""What the server records of a federated round, and the model metadata it writes (no Flower here).

A ``RoundRecord`` is written to each checkpoint's ``round.json`` and as a line of
``metrics.jsonl``, and read back on resume. ``SiteGuarantees`` holds each site's latest
cumulative (epsilon, delta), which the privacy statement reports per site and at its worst.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from seqanom_core.config import Source
from seqanom_core.federation.releases import ReleaseKind
from seqanom_core.federation.run_config import RunConfig

# Site metrics that a weighted mean over sites would misstate (a mean epsilon is no site's
# guarantee): the round log keeps them per site (``sites``); the worst site's cumulative epsilon
# is the record's privacy statement (``privacy``).
PER_SITE_ONLY = frozenset({"epsilon", "delta", "budget", "noise-multiplier", "declined",
                           "calibration-noise", *(f"epsilon-{k}" for k in ReleaseKind)})


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
    # bytes of the model arrays in each training message, to a site and back from it (a
    # fine-tuning mode sends the trainable arrays only)
    message_model_bytes: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """A record read back from ``round.json`` (keys it does not know are left out)."""
        return cls(**{k: data[k] for k in asdict(cls(0)) if k in data})

    def note_site(self, name: str, metrics: Mapping[str, float]) -> None:
        """A site's training reply: whether it declined, and its scalar metrics."""
        self.sites[name] = {"declined": bool(metrics.get("declined", 0.0)),
                            **{k: v for k, v in metrics.items() if k != "declined"}}

    def declined_stop_reason(self) -> str:
        """The planned stop when every site declined this round (budgets spent, or the run
        refused by the sites' own privacy policies), else ''."""
        if self.sites and all(s["declined"] for s in self.sites.values()):
            policy = sorted(n for n, s in self.sites.items() if s.get("declined-policy"))
            why = (f"{', '.join(policy)} refused the run by their own privacy policy"
                   + (", the others' budgets are spent" if len(policy) < len(self.sites) else "")
                   if policy else "their privacy budgets are spent")
            return (f"every site declined round {self.round}: {why}; training ended after round "
                    f"{self.round - 1}")
        return ""


@dataclass
class SiteGuarantees:
    """Each site's latest cumulative (epsilon, delta), as its replies reported them."""

    epsilon: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> kind -> epsilon

    def note(self, name: str, metrics: Mapping[str, Any]) -> None:
        """Keep a site's reported epsilon (and delta, 0 when missing) and its epsilon per kind of
        release, if it reported them (a later reply of the same round may report more spent)."""
        if "epsilon" in metrics:
            self.epsilon[name], self.delta[name] = metrics["epsilon"], metrics.get("delta", 0.0)
            kinds = {k.removeprefix("epsilon-"): float(v) for k, v in metrics.items()
                     if k.startswith("epsilon-")}
            if kinds:
                self.by_kind[name] = kinds

    @classmethod
    def from_records(cls, records: list[RoundRecord]) -> SiteGuarantees:
        """The guarantees after ``records`` (oldest first), as on resume."""
        out = cls()
        for rec in records:
            for name, site in rec.sites.items():
                out.note(name, site)
        if records:  # the last statement holds what the calibration releases added after training
            p = records[-1].privacy or {}
            out.epsilon.update(p.get("epsilon_per_site") or {})
            out.delta.update(p.get("delta_per_site") or {})
            out.by_kind.update(p.get("epsilon_by_kind_per_site") or {})
        return out


def weighted_train_metrics(sites: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The round's train metrics from the sites' metrics in clear (SecAgg+): the examples of the
    sites that trained, and their train loss weighted by examples when every one sent it."""
    trained = [m for m in sites.values() if not m.get("declined")]
    n = sum(m.get("num-examples", 0.0) for m in trained)
    out = {"num-examples": n}
    if n > 0 and all("train-loss" in m for m in trained):
        out["train-loss"] = sum(m["train-loss"] * m["num-examples"] for m in trained) / n
    return out


def calibration_text(settings: RunConfig) -> str:
    """How a federated model's calibration was made, in the privacy statement's terms."""
    fed = settings.federation
    shoppers = ("all its shoppers (training ones too)" if settings.calibrates_on_all
                else "its held-out validation shoppers")
    if settings.train.dp is None:
        return (f"federated, not DP: noisy per-site histograms of {shoppers} (noise std "
                f"{fed.calibration_noise} counts per bin, not accounted)")
    return (f"federated, accounted: Gaussian-noised per-site histograms of {shoppers}, in each "
            f"site's ledger (planned at {fed.calibration_share:.0%} of its budget per run)")


def model_metadata(settings: RunConfig, run_id: str, rec: RoundRecord,
                   privacy: dict[str, Any], stop_reason: str) -> dict[str, Any]:
    """The metadata of the global model after round ``rec.round`` (model directory)."""
    fed = settings.federation
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": settings.model.kind, "source": str(Source.EVENTS), "federated": True,
            "run_id": run_id, "round": rec.round, "strategy": fed.strategy,
            "alert_rate": fed.alert_rate, "privacy": privacy, "stop_reason": stop_reason,
            "calibration": calibration_text(settings),
            "threshold_noise": rec.threshold_noise,
            "round_metrics": {"train": rec.train, "evaluate": rec.evaluate},
            **({"pretrained": {"path": settings.pretrained, "finetune": settings.train.finetune,
                               "adapter_rank": settings.train.adapter_rank,
                               "message_model_bytes": rec.message_model_bytes}}
               if settings.pretrained else {})}
