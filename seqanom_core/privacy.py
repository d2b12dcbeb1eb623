"""Privacy accounting around Opacus' accountants (RDP or PRV): cumulative state, noise search
and the one rule for how much noise a training call may need before it declines.

The protected unit is one shopper: one training example is one shopper's sequence (one window of
it per step), drawn with Poisson sampling, so DP-SGD's sample-level guarantee is a shopper-level
(epsilon, delta) guarantee for the data set the training ran on.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqanom_core.atomic_files import write_json_atomic
from seqanom_core.config import ACCOUNTANTS, MAX_NOISE
from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded

if TYPE_CHECKING:  # opacus is imported where it is used: a federated evaluate or
    # scoring message then starts its process ~2 s of CPU faster (it never needs it)
    from opacus.accountants.accountant import IAccountant

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"  # the default, and what every state written before PRV was offered used
UNIT = "one shopper (all of their events) at this site"
#: What ledgers and model metadata call each accountant.
ACCOUNTANT_NAMES = {"rdp": "Opacus RDP", "prv": "Opacus PRV"}
#: Above this RDP epsilon Opacus' PRV discretisation grows to gigabytes (noise 0.15, q 1/11,
#: 220 steps: 25 s, 1.2 GB, and it returns inf); PRV then reports the RDP bound, which is an
#: upper bound too, and such an epsilon protects nobody either way.
PRV_MAX_EPSILON = 100.0


def accountant_name(accountant: str) -> str:
    """People's name of an accountant key: "Opacus RDP" or "Opacus PRV"."""
    return ACCOUNTANT_NAMES[accountant]


@dataclass
class AccountantState:
    """Serializable history of DP-SGD steps: ``[(noise_multiplier, sample_rate, steps), ...]``."""

    history: list[tuple[float, float, int]] = field(default_factory=list)
    delta: float | None = None
    accountant: str = ACCOUNTANT

    def accountant_obj(self) -> IAccountant:
        """An Opacus accountant (of this state's kind) holding this history."""
        from opacus.accountants import PRVAccountant, RDPAccountant

        acc = PRVAccountant() if self.accountant == "prv" else RDPAccountant()
        acc.history = [tuple(h) for h in self.history]  # type: ignore[misc]
        return acc

    def epsilon_after(self, sigma: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon at ``delta`` after one more release of ``steps`` DP-SGD steps."""
        return _epsilon([*self.history, (sigma, sample_rate, steps)], delta, self.accountant)

    def require(self, accountant: str, where: str) -> None:
        """Refuse to continue this history under another accountant (never converted)."""
        if self.accountant != accountant:
            raise ConfigError(f"{where}: written with the {self.accountant!r} accountant, but "
                              f"{accountant!r} is configured; use --accountant "
                              f"{self.accountant} (or accountant = \"{self.accountant}\") with it")

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative epsilon at ``delta`` (default: the state's delta); 0 with no history."""
        d = self.delta if delta is None else delta
        if not self.history:
            return 0.0
        if d is None:
            raise ConfigError("epsilon needs a delta")
        return _epsilon(self.history, d, self.accountant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"accountant": self.accountant, "delta": self.delta,
                "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountantState:
        """Rebuild from ``to_dict`` output. A file without an accountant and a history is refused,
        not read as an empty history: that would silently reset a spent budget."""
        if not isinstance(data, dict) or "accountant" not in data or "history" not in data:
            raise ConfigError("not an accountant state (needs 'accountant' and 'history')")
        if data["accountant"] not in ACCOUNTANTS:
            raise ConfigError(f"unsupported accountant {data['accountant']!r} (known: "
                              f"{', '.join(ACCOUNTANTS)})")
        if not isinstance(data["history"], list):
            raise ConfigError("'history' must be a list of [noise multiplier, sample rate, steps]")
        hist = [(float(s), float(q), int(n)) for s, q, n in data["history"]]
        if any(not (math.isfinite(s) and s > 0 and 0 < q <= 1 and n > 0) for s, q, n in hist):
            raise ConfigError("'history' holds an entry outside noise > 0, 0 < rate <= 1, steps > 0")
        delta = data.get("delta")
        if delta is None and hist:
            raise ConfigError("an accountant history needs its delta")
        if delta is not None and not 0 < float(delta) < 1:
            raise ConfigError(f"delta must be in (0, 1), not {delta}")
        return cls(history=hist, delta=None if delta is None else float(delta),
                   accountant=str(data["accountant"]))

    def save(self, path: str | Path) -> None:
        """Write the state as JSON (atomically)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> AccountantState:
        """Read a state written by ``save``."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:  # ConfigError is a ValueError too
            raise ConfigError(f"{path}: cannot read accountant state: {err}") from err


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sample_rate: float, sigma: float) -> np.ndarray:
    """Opacus' RDP of one sampled-Gaussian step at its default orders (read-only, memoised).

    Opacus recomputes this series for every history entry on every epsilon query (about 0.2 s
    at q < 1); a site asks dozens of times per round (noise search, checks, ledger writes), and
    in simulation many sites share q and sigma.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1,
                                   orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.flags.writeable = False
    return rdp


def _epsilon(history: list[tuple[float, float, int]], delta: float,
             accountant: str = ACCOUNTANT) -> float:
    """Epsilon at ``delta`` of ``history`` under Opacus' ``accountant`` ("rdp" or "prv")."""
    if accountant == "prv":
        return _prv_epsilon(_mechanisms(history), float(delta))
    return _rdp_epsilon(history, delta)


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """``RDPAccountant(history).get_epsilon(delta)``, term for term, with memoised RDP vectors."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum([_rdp_per_step(float(q), float(s)) * n for s, q, n in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                            delta=delta)
    return float(eps)


def _mechanisms(history: list[tuple[float, float, int]]) -> tuple[tuple[float, float, int], ...]:
    """The history with the steps of equal (noise, rate) mechanisms added up, in a fixed order.

    Composition does not depend on order, so this is the same privacy loss; PRV's cost grows
    with the number of distinct entries (a Gaussian entry per round would otherwise add one)."""
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        steps[(float(s), float(q))] = steps.get((float(s), float(q)), 0) + int(n)
    return tuple((s, q, n) for (s, q), n in sorted(steps.items()))


@functools.lru_cache(maxsize=1024)
def _prv_epsilon(mechanisms: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """``PRVAccountant(mechanisms).get_epsilon(delta)`` (memoised: 0.2 s for one entry, about
    1 s for five distinct ones on one core, and a site asks many times per round)."""
    rdp = _rdp_epsilon(list(mechanisms), delta)
    if rdp > PRV_MAX_EPSILON:
        return rdp
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(mechanisms)
    # q = 1 (a plain Gaussian mechanism) takes log(1 - q) = -inf inside Opacus, harmlessly; the
    # RDP bound it sizes its domain with warns about its orders, which is not the answer here
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta))


def default_delta(n_examples: int) -> float:
    """A delta well below 1/n: ``min(1e-5, 1 / (10 n))``."""
    return min(1e-5, 1.0 / (10.0 * max(n_examples, 1)))


def noise_for_budget(
    prior: AccountantState, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    *, fits: float | None = None,
) -> float:
    """Smallest noise multiplier (within 1%) keeping the *cumulative* epsilon <= target, under
    the prior's accountant. ``fits``: a noise known to keep it (a starting point for PRV).

    Raises PrivacyBudgetExceeded when the prior history alone already reaches the target.
    """
    spent = prior.epsilon(delta)
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted: epsilon {spent:.3f} already spent of {target_epsilon}"
        )
    if prior.accountant == "rdp":
        return _bisect_noise(prior, target_epsilon, delta, sample_rate, steps, spent)
    # PRV (0.2-2 s a query): start from the RDP answer, an upper bound of PRV's, unless RDP
    # counts the prior history alone as over the target already (then from ``fits``, or 1)
    rdp = AccountantState(history=prior.history, delta=prior.delta)
    guess = (_bisect_noise(rdp, target_epsilon, delta, sample_rate, steps, spent)
             if rdp.epsilon(delta) < target_epsilon else fits or 1.0)
    return _refine_noise(lambda s: prior.epsilon_after(s, sample_rate, steps, delta),
                         target_epsilon, guess, steps, spent)


def _bisect_noise(prior: AccountantState, target_epsilon: float, delta: float,
                  sample_rate: float, steps: int, spent: float) -> float:
    """Noise search by doubling and bisection (about 12 epsilon queries: fine for fast RDP)."""

    def total(sigma: float) -> float:
        return prior.epsilon_after(sigma, sample_rate, steps, delta)

    lo, hi = 0.3, 1.0
    while total(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyBudgetExceeded(
                f"no noise level keeps epsilon <= {target_epsilon} over {steps} steps "
                f"(already spent {spent:.3f})"
            )
    if total(lo) <= target_epsilon:
        return lo
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if total(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def _refine_noise(total: Any, target_epsilon: float, guess: float, steps: int,
                  spent: float) -> float:
    """Smallest noise (within 1%) with ``total(noise) <= target``, starting from ``guess``
    (the RDP answer: PRV needs at most that), in few queries of a slow accountant.

    Brackets the answer in steps of 1.25 from the guess, then closes the bracket with the
    Illinois variant of regula falsi on log epsilon against log noise, and a 1% probe across
    once a point lands within 1% of the target epsilon: typically 5-7 queries in all.
    """
    hi = guess
    while total(hi) > target_epsilon:  # not from the RDP answer (PRV is below it)
        hi *= 2
        if hi > 1e4:
            raise PrivacyBudgetExceeded(
                f"no noise level keeps epsilon <= {target_epsilon} over {steps} steps "
                f"(already spent {spent:.3f})")
    lo = hi / 1.25
    while total(lo) <= target_epsilon:
        hi, lo = lo, lo / 1.25
        if lo < 1e-3:
            return hi

    def gap(sigma: float) -> float:  # > 0: too little noise
        return math.log(total(sigma)) - math.log(target_epsilon)

    g_lo, g_hi, last = gap(lo), gap(hi), 0
    while hi - lo > 0.01 * hi:
        a, b = math.log(lo), math.log(hi)
        x = math.exp(a + (b - a) * g_lo / (g_lo - g_hi))
        x = min(max(x, lo * 1.001), hi / 1.001)
        g_x = gap(x)
        if g_x > 0:
            lo, g_lo = x, g_x
            g_hi, last = (g_hi / 2 if last == -1 else g_hi), -1
            probe = x * 1.01
        else:
            hi, g_hi = x, g_x
            g_lo, last = (g_lo / 2 if last == 1 else g_lo), 1
            probe = x / 1.01
        if abs(g_x) < 0.01 and lo < probe < hi:  # near: try to close the bracket at once
            g_p = gap(probe)
            if g_p > 0:
                lo, g_lo = probe, g_p
            else:
                hi, g_hi = probe, g_p
    return hi


def noise_within_budget(
    prior: AccountantState, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    max_noise: float = MAX_NOISE,
) -> float:
    """The noise of a DP training call under a budget, or PrivacyBudgetExceeded (one line) when
    more than ``max_noise`` would be needed: the one rule of federated sites (which then decline
    the round) and of ``seqanom train --dp`` (which then trains nothing)."""
    spent = prior.epsilon(delta)
    if spent < target_epsilon:
        at_max = prior.epsilon_after(max_noise, sample_rate, steps, delta)
        if at_max > target_epsilon:
            raise PrivacyBudgetExceeded(
                f"too little privacy budget left: epsilon {spent:.3f} of {target_epsilon} spent, "
                f"and even the max noise {max_noise:g} over {steps} steps would bring it to "
                f"{at_max:.3f} ({accountant_name(prior.accountant)}, delta {delta:.1e})")
    return noise_for_budget(prior, target_epsilon, delta, sample_rate, steps,
                            fits=max_noise if spent < target_epsilon else None)


def fixed_noise_within_budget(
    prior: AccountantState, sigma: float, budget: float | None, delta: float, sample_rate: float,
    steps: int, max_noise: float = MAX_NOISE,
) -> float:
    """Check a noise multiplier that was given, not planned: refused (PrivacyBudgetExceeded, one
    line) above ``max_noise``, as a planned one is, and when the epsilon it implies under the
    prior's accountant passes ``budget``. Returns the epsilon after the release."""
    if sigma > max_noise:
        raise PrivacyBudgetExceeded(
            f"noise multiplier {sigma:g} is above the max noise {max_noise:g}: a model learns "
            "next to nothing there while the release still spends budget")
    after = prior.epsilon_after(sigma, sample_rate, steps, delta)
    if budget is not None and after > budget * (1 + 1e-9):
        raise PrivacyBudgetExceeded(
            f"noise multiplier {sigma:g} over {steps} steps would bring epsilon to {after:.3f}, "
            f"over the budget {budget:g} (spent {prior.epsilon(delta):.3f}; "
            f"{accountant_name(prior.accountant)}, delta {delta:.1e})")
    return after


def noise_source(seed: int | None) -> str:
    """How a DP training's randomness (Poisson sampling, noise) was drawn, for privacy statements."""
    if seed is None:
        return ("seeded from the OS at every training call (secret; PyTorch generators, not "
                "Opacus' cryptographic secure_mode)")
    return (f"seeded with dp seed {seed} (reproducible: whoever knows the seed can regenerate "
            "and remove the noise; for experiments, not a deployment)")


def epsilon_text(epsilon: float | None, unknown: str = "-") -> str:
    """An epsilon rounded for people: ``7.997`` (``unknown`` when not known)."""
    return unknown if epsilon is None else f"{epsilon:.3f}"


def delta_text(delta: float | None, unknown: str = "-") -> str:
    """A delta rounded for people: ``1.0e-05`` (``unknown`` when not known)."""
    return unknown if delta is None else f"{delta:.1e}"


def guarantee_text(epsilon: float | None, delta: float | None, protects: str) -> str:
    """A guarantee rounded for people, one form everywhere: ``(7.997, 1.0e-05)-DP for <unit>``
    (``-`` for a figure that is not known)."""
    return f"({epsilon_text(epsilon)}, {delta_text(delta)})-DP for {protects}"
