"""Empirical privacy audit: membership inference on planted canary shoppers, and the ε lower
bound of Steinke, Nasr & Jagielski (2023), "Privacy auditing with one (1) training run".

The audit plants ``m`` synthetic *canary* shoppers: each an independent random draw (its own
seed) of the data set's own items (with their categories), behaviours (at their frequencies in
the data) and within-shopper time gaps, under a fresh id. Each canary is included in the
training shoppers independently with probability 1/2 (seeded); the detector is trained as
configured; then the attacker scores every canary with the trained model's loss on it (the
mean per-event negative log-likelihood of all heads, the detector's ``total:mean`` statistic)
and guesses that the canaries with the lowest loss were trained on. A canary is a random
sequence, so a model that has not seen it can only predict it as well as any random shopper;
one that memorised it predicts it better.

The held-out shoppers that calibrate the scores are split off the real shoppers only (the same
split ``fit`` makes, same seed), and the canaries that are in go to the training part: two runs
that differ in one canary then differ by exactly that shopper in the DP-SGD training set, the
neighbouring relation the accountant's (ε, δ) is about.

The lower bound (``epsilon_lower_bound``) is Theorem 3.1 of Steinke et al. with δ > 0: if
training is (ε, δ)-DP with respect to each canary, then for an auditor that makes ``r`` guesses
on ``m`` canaries (each in with probability 1/2, independently), the number ``W`` of correct
guesses satisfies, for every ``v``,

    P[W >= v] <= P[Binomial(r, p) >= v] + 2 m δ max_{i=1..v} P[v - i <= Binomial(r, p) < v] / i,
    p = e^ε / (1 + e^ε).

The bound reported is the largest ε that this test rejects at confidence 0.95 (p-value below
0.05) given the observed ``v``: "the training cannot be ε-DP for any smaller ε". The auditor
guesses on the ``k`` canaries it is most confident about, ``k/2`` in (lowest loss) and ``k/2``
out (highest loss); ``k`` runs over a fixed grid of fractions of ``m`` and every test runs at
0.05 / (grid size) (a union bound), so taking the best ``k`` keeps the 95% confidence. It is a
statistical test of one run, not an accountant: a bound far below the accounted ε does not mean
the accounting is loose, only that this attack did not show more.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.config import DetectorConfig
from seqanom_core.errors import ConfigError
from seqanom_core.metrics import auroc
from seqanom_core.schema import events_from_arrays
from seqanom_core.scoring import stat_names
from seqanom_core.sequences import SequenceSet, build_sequences, split_shoppers

log = logging.getLogger(__name__)

#: 1 - the confidence of the lower bound
SIGNIFICANCE = 0.05
#: numbers of guesses the auditor may make, as fractions of the canaries (k/2 in, k/2 out)
GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
#: the attack statistic: a canary's mean per-event loss over all heads (lower = member)
ATTACK_STATISTIC = "total:mean"
CANARY_PREFIX = "canary-"


# --------------------------------------------------------------------------- canaries
def make_canaries(events: pa.Table, n: int, length: int, seed: int) -> pa.Table:
    """``n`` synthetic shoppers of ``length`` events each, drawn from ``events``' own items (with
    their categories), behaviour frequencies and within-shopper gaps; fresh ids, none a real one.

    Canary ``i`` depends only on ``seed``, ``i`` and the data (its own seed stream), so a larger
    ``n`` adds canaries without changing the first ones."""
    if n < 2:
        raise ConfigError(f"need at least 2 canaries, not {n}")
    if length < 2:
        raise ConfigError(f"canary_length must be at least 2 events, not {length}")
    if events.num_rows == 0:
        raise ConfigError("no events to draw canaries from")
    items = events.column("item_id").to_numpy(zero_copy_only=False).astype(str)
    cats = events.column("category_id").to_numpy(zero_copy_only=False).astype(str)
    item_pool, first = np.unique(items, return_index=True)
    cat_pool = cats[first]  # each item with the category it has in the data
    behavior = events.column("behavior").to_numpy().astype(np.int64)
    b_values, b_counts = np.unique(behavior, return_counts=True)
    b_prob = b_counts / b_counts.sum()
    gaps = _within_shopper_gaps(events)
    ts = events.column("timestamp").to_numpy()
    t_lo, t_hi = float(ts.min()), float(ts.max())
    taken = set(pc.unique(events.column("user_id")).to_pylist())
    prefix = CANARY_PREFIX
    while any(f"{prefix}{i:05d}" in taken for i in range(n)):
        prefix = "x" + prefix
    cols: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "category_id": [],
                                         "behavior": [], "timestamp": []}
    for i, stream in enumerate(np.random.SeedSequence([seed, 0xCA4A]).spawn(n)):
        rng = np.random.default_rng(stream)
        pick = rng.integers(0, len(item_pool), size=length)
        gap = rng.choice(gaps, size=length - 1) if len(gaps) else rng.uniform(1, 600, length - 1)
        start = rng.uniform(t_lo, max(t_lo, t_hi - float(gap.sum())))
        cols["user_id"].append(np.full(length, f"{prefix}{i:05d}"))
        cols["item_id"].append(item_pool[pick])
        cols["category_id"].append(cat_pool[pick])
        cols["behavior"].append(rng.choice(b_values, size=length, p=b_prob))
        cols["timestamp"].append(start + np.concatenate([[0.0], np.cumsum(gap)]))
    return events_from_arrays(**{k: np.concatenate(v) for k, v in cols.items()})


def _within_shopper_gaps(events: pa.Table) -> np.ndarray:
    """Seconds between consecutive events of the same shopper ``(n_gaps,)``."""
    users = events.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    ts = events.column("timestamp").to_numpy()
    order = np.lexsort((ts, users))
    same = users[order][1:] == users[order][:-1]
    return np.diff(ts[order])[same]


def draw_membership(n: int, seed: int) -> np.ndarray:
    """Which of ``n`` canaries are trained on ``(n,)`` bool: each independently with prob 1/2."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0x14])).random(n) < 0.5


def concat_sequences(parts: list[SequenceSet]) -> SequenceSet:
    """One SequenceSet of the sequences of ``parts`` in order (same source; ``rows`` dropped)."""
    if not parts or len({p.source for p in parts}) != 1:
        raise ConfigError("need at least one set of sequences, all of one source")
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for p in parts:
        offsets.append(p.offsets[1:] + base)
        base += p.n_events
    stamps = [p.timestamp for p in parts]
    return SequenceSet(
        ids=np.concatenate([p.ids for p in parts]),
        offsets=np.concatenate(offsets),
        channels={c: np.concatenate([p.channels[c] for p in parts]) for c in parts[0].channels},
        source=parts[0].source,
        timestamp=None if any(s is None for s in stamps) else np.concatenate(stamps),  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- the attack
def membership_auc(is_member: np.ndarray, member_score: np.ndarray) -> float:
    """AUC of telling members from non-members by ``member_score`` (higher = member)."""
    return auroc(np.asarray(is_member).astype(int), member_score)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` or more correct guesses out of ``r`` on ``m`` canaries if training is
    (ε, δ)-DP (Steinke, Nasr & Jagielski 2023, Theorem 3.1; see the module docstring)."""
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(f"need epsilon >= 0 and delta in [0, 1], not {epsilon}, {delta}")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    slack = 0.0
    if delta > 0 and v > 0:
        # window_i = P[v - i <= Binomial(r, p) < v] = sum of the pmf at v-1, ..., v-i
        window = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, p))
        slack = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * slack)


def one_run_epsilon(m: int, r: int, v: int, delta: float, significance: float = SIGNIFICANCE) -> float:
    """Largest ε the one-run test rejects at ``significance`` (0 when it rejects none)."""
    if one_run_p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < significance:  # p grows with ε, to 1 at v <= r
        lo, hi = hi, 2 * hi
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def epsilon_lower_bound(is_member: np.ndarray, member_score: np.ndarray, delta: float = 0.0,
                        significance: float = SIGNIFICANCE,
                        fractions: tuple[float, ...] = GUESS_FRACTIONS) -> dict[str, Any]:
    """The one-run ε lower bound from member scores ``(m,)`` (higher = member) and the truth.

    For each ``k`` of the grid (fractions of ``m``, even, at least 2), guesses "in" for the
    ``k/2`` highest scores and "out" for the ``k/2`` lowest, and runs the test at
    ``significance / len(grid)``; returns the largest bound with its ``k`` and correct guesses."""
    truth = np.asarray(is_member, dtype=bool)
    score = np.asarray(member_score, dtype=np.float64)
    m = len(truth)
    if m < 2 or score.shape != truth.shape or not np.isfinite(score).all():
        raise ConfigError("need at least 2 canaries with one finite score each")
    ks = sorted({max(2, 2 * int(round(f * m / 2))) for f in fractions})
    ks = [min(k, m - m % 2) for k in ks]
    ks = sorted(set(ks))
    level = significance / len(ks)
    order = np.argsort(-score, kind="stable")  # most member-like first
    best: dict[str, Any] = {"epsilon": 0.0, "guesses": 0, "correct": 0}
    tried = []
    for k in ks:
        half = k // 2
        correct = int(truth[order[:half]].sum() + (~truth[order[m - half:]]).sum())
        eps = one_run_epsilon(m, k, correct, delta, level)
        tried.append({"guesses": k, "correct": correct, "epsilon": eps})
        if eps > best["epsilon"]:
            best = {"epsilon": eps, "guesses": k, "correct": correct}
    return {**best, "confidence": 1 - significance, "delta": delta, "canaries": m,
            "per_guess_count": tried,
            "test": "Steinke, Nasr & Jagielski 2023, Theorem 3.1 (with delta), "
                    f"best of {len(ks)} guess counts at {significance}/{len(ks)} each"}


# --------------------------------------------------------------------------- one audit
@dataclass(frozen=True)
class AuditConfig:
    """How many canaries, how long, and the seed of their draws and of who is in."""

    canaries: int = 256
    canary_length: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise ConfigError(f"need at least 2 canaries, not {self.canaries}")
        if self.canary_length < 2:
            raise ConfigError(f"canary_length must be at least 2 events, not {self.canary_length}")


def run_audit(events: pa.Table, config: DetectorConfig, audit: AuditConfig, *,
              progress: bool = False) -> dict[str, Any]:
    """Plant canaries in ``events``, train a detector as ``config`` says, attack the canaries.

    Returns the audit record: ``mia_auc``, ``epsilon_lower_bound``, ``epsilon_accounted`` (None
    without DP), the bound's details, the canaries and training sizes."""
    from seqanom_core.detector import make_detector

    t0 = time.time()
    if audit.canary_length + 1 > config.model.max_len:
        log.warning("canaries of %d events are longer than one model window (%d positions): "
                    "training sees a part of each per step", audit.canary_length,
                    config.model.max_len)
    real = build_sequences(events, config.tokenizer)
    if len(real) < 10:
        raise ConfigError(f"need at least 10 real shoppers, got {len(real)}")
    # the split fit would make, on the real shoppers only: canaries only ever go to training
    train_real, calibration = split_shoppers(real, config.train.calibration_fraction,
                                             config.train.seed)
    canaries = build_sequences(make_canaries(events, audit.canaries, audit.canary_length,
                                             audit.seed), config.tokenizer)
    is_member = draw_membership(len(canaries), audit.seed)
    train = concat_sequences([train_real, canaries.subset(np.flatnonzero(is_member))])
    log.info("audit: %d canaries of %d events, %d trained on, with %d real training shoppers",
             len(canaries), audit.canary_length, int(is_member.sum()), len(train_real))
    det = make_detector(config.model.kind, model_config=config.model,
                        tokenizer_config=config.tokenizer, train_config=config.train,
                        progress=progress)
    det.fit(train, calibration=calibration)
    stats = det.score_shoppers(canaries).stats
    loss = stats[:, stat_names().index(ATTACK_STATISTIC)]
    member_score = -loss
    result = det.train_result_
    delta = float(result.delta) if result.dp and result.delta is not None else 0.0
    bound = epsilon_lower_bound(is_member, member_score, delta)
    auc = membership_auc(is_member, member_score)  # NaN when every canary is on one side
    return {
        "mia_auc": auc if math.isfinite(auc) else None,
        "epsilon_lower_bound": bound["epsilon"],
        "epsilon_accounted": float(result.epsilon) if result.dp and result.epsilon is not None
        else None,
        "delta": delta if result.dp else None,
        "dp": bool(result.dp),
        "bound": bound,
        "attack": f"loss: mean per-event negative log-likelihood ({ATTACK_STATISTIC}), "
                  "lower = member",
        "canaries": {**asdict(audit), "members": int(is_member.sum())},
        "mean_loss": {"members": float(loss[is_member].mean()) if is_member.any() else None,
                      "non_members": float(loss[~is_member].mean()) if not is_member.all()
                      else None},
        "model": config.model.kind,
        "epochs": config.train.epochs,
        "n_train_shoppers": len(train),
        "n_real_training_shoppers": len(train_real),
        "n_calibration_shoppers": len(calibration),
        "final_loss": result.epoch_losses[-1] if result.epoch_losses else None,
        "seconds": round(time.time() - t0, 1),
    }
