"""A site's own privacy policy: the floor that no run config can lower.

The central team is not trusted with shoppers' privacy: a run config only *asks*. A deployed site
(node config with ``data-path``) sets its floor in its node config (``seqanom supernode`` flags):

- ``require-dp`` (default true): a run without DP is declined;
- ``privacy-budget``: the site's epsilon budget over its ledger. A run may ask for less (it is
  used) but never for more: the site's budget caps it (default ``DEFAULT_SITE_BUDGET`` when the
  node config names none, so no run config can spend an unbounded epsilon);
- ``max-delta`` (default ``DEFAULT_MAX_DELTA``): a run whose delta is set above it is declined;
- ``max-rounds`` (default: no limit): a run of more rounds is declined;
- ``allow-dp-seed`` (default false): a run that seeds DP noise (``dp-seed``, reproducible and so
  removable by whoever knows the seed) is declined.

A declined run gets replies with ``declined`` = 1 and ``declined-policy`` = the reason's code
(``REASONS``), which the server logs in words; the site's own log has the details. In simulation
(node config with ``partition-id``) the sites are the researcher's own partitions: the run config
is the researcher's choice, so nothing is required unless the node config says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seqanom_core.config import is_positive_number
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import RunConfig

DEFAULT_SITE_BUDGET = 8.0  # a deployed site's epsilon budget when its node config names none
DEFAULT_MAX_DELTA = 1e-5  # a deployed site's delta ceiling (the project's default delta cap)
#: node config keys of the policy (``privacy-budget`` is also the site's ledger budget)
POLICY_KEYS = frozenset({"require-dp", "privacy-budget", "max-delta", "max-rounds",
                         "allow-dp-seed"})
#: reason codes a declining site sends (``declined-policy``), and what the server logs
REASONS: dict[int, str] = {
    1: "the site requires DP and the run config turns it off",
    2: "the run config's delta is above the site's ceiling",
    3: "the run has more rounds than the site allows",
    4: "the run config seeds the DP noise, which the site does not allow",
}


def _flag(node: Mapping[str, Any], key: str, default: bool) -> bool:
    value = node.get(key, default)
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"node config {key} must be true or false, not {value!r}")
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"node config {key} must be true or false, not {value!r}")
    return value


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts of a run (see the module docstring)."""

    require_dp: bool = True
    budget: float | None = DEFAULT_SITE_BUDGET
    max_delta: float | None = DEFAULT_MAX_DELTA
    max_rounds: int | None = None
    allow_dp_seed: bool = False

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> SitePolicy:
        """The policy a node config sets: a deployed site's defaults are strict, a simulated
        partition's permissive (the module docstring). ``ConfigError`` for a bad value."""
        deployed = "data-path" in node
        budget = node.get("privacy-budget", DEFAULT_SITE_BUDGET if deployed else None)
        if budget is not None and (isinstance(budget, bool)
                                   or not is_positive_number(float(budget))):
            raise ConfigError(f"node config privacy-budget must be a positive number, not "
                              f"{budget!r}")
        max_delta = node.get("max-delta", DEFAULT_MAX_DELTA if deployed else None)
        if max_delta is not None and not 0 < float(max_delta) < 1:
            raise ConfigError(f"node config max-delta must be in (0, 1), not {max_delta!r}")
        max_rounds = node.get("max-rounds")
        if max_rounds is not None and (int(max_rounds) != max_rounds or int(max_rounds) < 1):
            raise ConfigError(f"node config max-rounds must be a positive integer, not "
                              f"{max_rounds!r}")
        return cls(require_dp=_flag(node, "require-dp", deployed),
                   budget=None if budget is None else float(budget),
                   max_delta=None if max_delta is None else float(max_delta),
                   max_rounds=None if max_rounds is None else int(max_rounds),
                   allow_dp_seed=_flag(node, "allow-dp-seed", not deployed))

    def refusal(self, settings: RunConfig) -> int:
        """The code of the first ``REASONS`` entry the run breaks, 0 when the site accepts it."""
        dp = settings.train.dp
        if self.require_dp and dp is None:
            return 1
        if dp is not None and self.max_delta is not None and dp.delta is not None \
                and dp.delta > self.max_delta:
            return 2
        if self.max_rounds is not None and settings.federation.num_rounds > self.max_rounds:
            return 3
        if not self.allow_dp_seed and (settings.dp_seed is not None
                                       or (dp is not None and dp.seed is not None)):
            return 4
        return 0

    def capped_budget(self, settings: RunConfig) -> float | None:
        """The budget the site trains under: the run's, capped at the site's (None without DP)."""
        if settings.train.dp is None:
            return None
        if self.budget is None:
            return settings.budget
        return self.budget if settings.budget is None else min(settings.budget, self.budget)


def refusal_text(code: int) -> str:
    """What the server logs for a ``declined-policy`` code."""
    return REASONS.get(int(code), f"its privacy policy (code {int(code)})")
