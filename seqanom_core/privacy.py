"""Privacy accounting helpers around Opacus' RDP accountant: cumulative state and noise search.

The protected unit is one shopper: one training example is one shopper's sequence (one window of
it per step), drawn with Poisson sampling, so DP-SGD's sample-level guarantee is a shopper-level
(epsilon, delta) guarantee for the data set the training ran on.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqanom_core.atomic_files import write_json_atomic
from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded

if TYPE_CHECKING:  # opacus is imported where it is used: a federated evaluate or
    # scoring message then starts its process ~2 s of CPU faster (it never needs it)
    from opacus.accountants import RDPAccountant

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"
UNIT = "one shopper (all of their events) at this site"


@dataclass
class AccountantState:
    """Serializable history of DP-SGD steps: ``[(noise_multiplier, sample_rate, steps), ...]``."""

    history: list[tuple[float, float, int]] = field(default_factory=list)
    delta: float | None = None
    accountant: str = ACCOUNTANT

    def accountant_obj(self) -> RDPAccountant:
        """An Opacus accountant holding this history."""
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [tuple(h) for h in self.history]  # type: ignore[misc]
        return acc

    def epsilon_after(self, sigma: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon at ``delta`` after one more release of ``steps`` DP-SGD steps."""
        return _epsilon([*self.history, (sigma, sample_rate, steps)], delta)

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative epsilon at ``delta`` (default: the state's delta); 0 with no history."""
        d = self.delta if delta is None else delta
        if not self.history:
            return 0.0
        if d is None:
            raise ConfigError("epsilon needs a delta")
        return _epsilon(self.history, d)

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
        if data["accountant"] != ACCOUNTANT:
            raise ConfigError(f"unsupported accountant {data['accountant']!r}")
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
        return cls(history=hist, delta=None if delta is None else float(delta))

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


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """``RDPAccountant(history).get_epsilon(delta)``, term for term, with memoised RDP vectors."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum([_rdp_per_step(float(q), float(s)) * n for s, q, n in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                            delta=delta)
    return float(eps)


def default_delta(n_examples: int) -> float:
    """A delta well below 1/n: ``min(1e-5, 1 / (10 n))``."""
    return min(1e-5, 1.0 / (10.0 * max(n_examples, 1)))


def noise_for_budget(
    prior: AccountantState, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Smallest noise multiplier (within 1%) keeping the *cumulative* epsilon <= target.

    Raises PrivacyBudgetExceeded when the prior history alone already reaches the target.
    """
    spent = prior.epsilon(delta)
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted: epsilon {spent:.3f} already spent of {target_epsilon}"
        )

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


def noise_source(seed: int | None) -> str:
    """How a DP training's randomness (Poisson sampling, noise) was drawn, for privacy statements."""
    if seed is None:
        return ("seeded from the OS at every training call (secret; PyTorch generators, not "
                "Opacus' cryptographic secure_mode)")
    return (f"seeded with dp seed {seed} (reproducible: whoever knows the seed can regenerate "
            "and remove the noise; for experiments, not a deployment)")


def guarantee_text(epsilon: float | None, delta: float | None, protects: str) -> str:
    """A guarantee rounded for people, one form everywhere: ``(7.997, 1.0e-05)-DP for <unit>``
    (``-`` for a figure that is not known)."""
    eps = "-" if epsilon is None else f"{epsilon:.3f}"
    dlt = "-" if delta is None else f"{delta:.1e}"
    return f"({eps}, {dlt})-DP for {protects}"
