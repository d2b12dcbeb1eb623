"""Everything a site may send to the aggregator, and how each is protected (one list, enforced).

Every value that leaves a site is named here, with its protection:

- ``accounted``: the output of a DP mechanism whose cost is in the site's privacy ledger (DP-SGD
  for the model update; Gaussian mechanisms for the noisy training count and the calibration
  histograms), or a function of such outputs and public settings only (post-processing: no
  further cost; e.g. the epsilon spent, which is computed from the noise levels and sample
  rates of the accounted releases);
- ``public``: carries nothing about any shopper, with the reason.

Anything else a site computes (validation loss, accuracy, AUROC, its own threshold, exact counts)
stays in the site's own log. The message-audit test (``tests/server/message_audit.py``) checks
every reply of a run against this list, and that the values marked public do not change when
one shopper is added or removed. Under ``dp = false`` nothing is protected: the list then only
says what is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from seqanom_core.federation import message_keys


class Protection(StrEnum):
    """How a released value is protected."""

    ACCOUNTED = "accounted"
    PUBLIC = "public"


class ReleaseKind(StrEnum):
    """The DP mechanisms whose cost a site's ledger holds (``kind`` of its entries)."""

    MODEL_UPDATE = "model-update"  # DP-SGD (Opacus), per round
    TRAINING_COUNT = "training-count"  # Gaussian, sensitivity 1, once per run
    CALIBRATION_STATISTICS = "calibration-statistics"  # Gaussian on the statistic histograms
    CALIBRATION_SCORES = "calibration-scores"  # Gaussian on the score histogram


@dataclass(frozen=True)
class Release:
    """One kind of value a site sends: where it travels, its protection, and how or why."""

    name: str  # record name (arrays, histograms, site) or metric name
    carried_in: str  # which record holds it
    protection: Protection
    how: str  # the mechanism (accounted) or the reason it is public
    kind: ReleaseKind | None = None  # the ledger kind whose epsilon covers it (accounted)
    derived: bool = False  # computed from accounted releases and public settings: no cost of its own


_DERIVED = "computed from the accounted releases' noise levels and the public settings only"

RELEASES: tuple[Release, ...] = (
    Release(message_keys.ARRAYS, "arrays", Protection.ACCOUNTED,
            "DP-SGD: per-shopper clipped gradients with Gaussian noise, Poisson sampling",
            ReleaseKind.MODEL_UPDATE),
    Release(message_keys.STAT_HIST, "histograms", Protection.ACCOUNTED,
            "Gaussian mechanism on tree histograms of the calibration shoppers' statistics "
            "(validation shoppers; training ones too under DP; L2 sensitivity "
            "sqrt(statistics x levels) for one shopper)",
            ReleaseKind.CALIBRATION_STATISTICS),
    Release(message_keys.SCORE_HIST, "histograms", Protection.ACCOUNTED,
            "Gaussian mechanism on a tree histogram of the calibration shoppers' scores "
            "(L2 sensitivity sqrt(levels))", ReleaseKind.CALIBRATION_SCORES),
    Release("num-examples", "metrics", Protection.ACCOUNTED,
            "the training shoppers' count plus Gaussian noise (sensitivity 1), drawn once per "
            "run and sent unchanged after; the aggregation weight, and what the sample rate, "
            "steps and delta are computed from", ReleaseKind.TRAINING_COUNT),
    Release("declined", "metrics", Protection.ACCOUNTED,
            f"whether the budget is spent: {_DERIVED}", ReleaseKind.MODEL_UPDATE, derived=True),
    Release("epsilon", "metrics", Protection.ACCOUNTED, f"cumulative epsilon: {_DERIVED}",
            ReleaseKind.MODEL_UPDATE, derived=True),
    *(Release(f"epsilon-{k}", "metrics", Protection.ACCOUNTED,
              f"epsilon of the {k} releases alone: {_DERIVED}", k, derived=True)
      for k in ReleaseKind),
    Release("noise-multiplier", "metrics", Protection.ACCOUNTED,
            f"DP-SGD's noise multiplier: {_DERIVED}", ReleaseKind.MODEL_UPDATE, derived=True),
    Release("delta", "metrics", Protection.ACCOUNTED,
            "the ledger's delta: set in the run config, or from the noisy training count",
            ReleaseKind.TRAINING_COUNT, derived=True),
    Release("calibration-noise", "metrics", Protection.ACCOUNTED,
            f"the noise std per count of the score histogram: {_DERIVED}",
            ReleaseKind.CALIBRATION_SCORES, derived=True),
    Release("budget", "metrics", Protection.PUBLIC, "the site's epsilon budget (run or node "
            "config)"),
    Release("declined-policy", "metrics", Protection.PUBLIC,
            "why the site's own privacy policy declined the run config (a code of "
            "site_policy.REASONS): the site's settings and the run config, no shopper's data"),
    Release("secagg-weight", "metrics", Protection.ACCOUNTED,
            "SecAgg+ weight: the noisy training count, capped (post-processing)",
            ReleaseKind.TRAINING_COUNT, derived=True),
    Release("secagg-clipped", "metrics", Protection.ACCOUNTED,
            "whether SecAgg+ clipped the (DP-SGD) update: post-processing of it",
            ReleaseKind.MODEL_UPDATE, derived=True),
    Release(message_keys.SITE, "site", Protection.PUBLIC, "the site's name from its node config"),
    Release("error", "error reply", Protection.PUBLIC,
            "which handler failed and the error's type, never its text (that stays in the "
            "site's log); whether a site fails at all is not covered when a failure can hinge "
            "on one shopper's rows"),
)

#: the scalar metrics a site may send (site -> server)
SITE_METRICS = frozenset(r.name for r in RELEASES if r.carried_in == "metrics")
def release(name: str) -> Release:
    """The inventory entry of ``name`` (KeyError: not something a site may send)."""
    for r in RELEASES:
        if r.name == name:
            return r
    raise KeyError(f"{name!r} is not in the release inventory (seqanom_core/federation/releases.py)")


def public_names() -> frozenset[str]:
    """Names of the values marked public."""
    return frozenset(r.name for r in RELEASES if r.protection is Protection.PUBLIC)


def inventory() -> list[dict[str, str | bool]]:
    """The inventory as rows for statements (name, record, protection, how, kind)."""
    return [{"name": r.name, "record": r.carried_in, "protection": str(r.protection),
             "how": r.how, **({"kind": str(r.kind)} if r.kind else {}),
             **({"derived": True} if r.derived else {})} for r in RELEASES]
