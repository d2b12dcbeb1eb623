"""A site's privacy ledger: every DP-SGD release it made, its budget, and the epsilon spent.

The ledger is what makes a site's budget cumulative across federated rounds and across runs:
it holds the Opacus accountant history (RDP or PRV, fixed when the ledger is created) of every
training call the site ever made (one ``(noise_multiplier, sample_rate, steps)`` entry per
call), the delta fixed at its first use, and
a human-readable entry per release (run, round, epsilon after). Before a round the site asks
the ledger which noise keeps the *planned* rest of the run inside the budget, or whether it must
decline; after the round it records what was spent. Epsilon always comes from the ledger's
Opacus accountant over the whole history; nothing here does privacy math of its own. A ledger
is never read under another accountant than the one it was written with.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqanom_core.atomic_files import write_json_atomic
from seqanom_core.config import MAX_NOISE, is_positive_number
from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded
from seqanom_core.privacy import UNIT, AccountantState, accountant_name, noise_within_budget

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
DEFAULT_KIND = "model-update"  # the kind of entries that name none (DP-SGD, as before kinds)


@dataclass
class PrivacyLedger:
    """Cumulative DP accounting of one site (shopper-level (epsilon, delta))."""

    budget: float | None = None  # epsilon budget; None means no budget is enforced
    state: AccountantState = field(default_factory=AccountantState)
    entries: list[dict[str, Any]] = field(default_factory=list)
    site: str = ""

    # ----------------------------------------------------------------- queries
    @property
    def delta(self) -> float | None:
        """The delta all of this ledger's epsilons are stated at (fixed at first use)."""
        return self.state.delta

    def spent(self) -> float:
        """Epsilon spent so far (0 with no history)."""
        return self.state.epsilon()

    def fix_delta(self, delta: float) -> float:
        """Fix the ledger's delta on first use; later calls must agree (returns the delta)."""
        if self.state.delta is None:
            self.state.delta = delta
        elif not math.isclose(self.state.delta, delta) and self.state.history:
            raise ConfigError(f"delta {delta} differs from the ledger's delta {self.state.delta}")
        return float(self.state.delta)

    def plan_noise(
        self, sample_rate: float, steps_per_round: int, rounds_left: int, *,
        max_noise: float = MAX_NOISE, reserved: Sequence[tuple[float, float, int]] = (),
    ) -> float:
        """Noise multiplier that spends the remaining budget evenly over ``rounds_left`` rounds,
        after ``reserved`` (``[(noise multiplier, sample rate, steps), ...]``: releases still
        planned in this run, e.g. calibration, whose cost is set aside first).

        Raises PrivacyBudgetExceeded when no noise up to ``max_noise`` fits (the site must
        decline): ``privacy.noise_within_budget``, the rule ``seqanom train --dp`` follows too.
        """
        if self.budget is None:
            raise ConfigError("planning noise needs a privacy budget")
        if self.state.delta is None:
            raise ConfigError("fix the ledger's delta before planning noise")
        try:
            return noise_within_budget(self._extended(reserved), self.budget, self.state.delta, sample_rate,
                                       steps_per_round * max(rounds_left, 1), max_noise)
        except PrivacyBudgetExceeded as err:
            raise PrivacyBudgetExceeded(f"{err}; {rounds_left} rounds left") from err

    def check_affordable(self, sigma: float, sample_rate: float, steps: int,
                         reserved: Sequence[tuple[float, float, int]] = ()) -> float:
        """Epsilon after the release (and ``reserved``, releases still planned); raises
        PrivacyBudgetExceeded if it would pass the budget."""
        if self.state.delta is None:
            raise ConfigError("fix the ledger's delta before training")
        after = self._extended(reserved).epsilon_after(sigma, sample_rate, steps,
                                                       self.state.delta)
        if self.budget is not None and after > self.budget * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"this round would bring epsilon to {after:.3f}, over the budget {self.budget} "
                f"(spent {self.spent():.3f})")
        return after

    def remaining(self) -> float | None:
        """Epsilon left under the budget (None without a budget; never negative)."""
        return None if self.budget is None else max(self.budget - self.spent(), 0.0)

    def by_run(self) -> list[dict[str, Any]]:
        """Spend per run, in the order runs first trained: rounds, steps, time span,
        ``epsilon_added`` (how much the run raised the cumulative epsilon; these add up to the
        total) and ``epsilon_alone`` (the run's releases accounted on their own).

        Entries written before run ids were recorded (or by ``seqanom train``) fall under run "".
        """
        runs: dict[str, dict[str, Any]] = {}
        before = 0.0
        for e in self.entries:
            run = runs.setdefault(str(e.get("run", "")), {
                "run": str(e.get("run", "")), "rounds": [], "steps": 0, "first": e.get("time"),
                "last": e.get("time"), "epsilon_added": 0.0, "releases": []})
            if "round" in e and e["round"] not in run["rounds"]:
                run["rounds"].append(e["round"])
            run["releases"] += [tuple(r) for r in e.get("releases", [])]
            run["steps"] += sum(int(r[2]) for r in e.get("releases", []))
            run["last"] = e.get("time")
            after = float(e.get("epsilon_after", before))
            run["epsilon_added"] += after - before
            before = after
        out = []
        for run in runs.values():
            alone = AccountantState(history=run.pop("releases"), delta=self.delta,
                                    accountant=self.state.accountant)
            out.append({**run, "epsilon_alone": alone.epsilon() if alone.history else 0.0})
        return out

    def _extended(self, entries: Sequence[tuple[float, float, int]]) -> AccountantState:
        """This ledger's accountant state with ``entries`` appended (the ledger is unchanged)."""
        if not entries:
            return self.state
        return AccountantState(history=[*self.state.history, *entries], delta=self.state.delta,
                               accountant=self.state.accountant)

    def by_kind(self) -> dict[str, float]:
        """Epsilon of each kind of release alone (entries without a kind: ``model-update``), at
        the ledger's delta; composed they give ``spent()``, which is at most their sum."""
        hist: dict[str, list[tuple[float, float, int]]] = {}
        for e in self.entries:
            hist.setdefault(str(e.get("kind", DEFAULT_KIND)), []).extend(
                (float(s), float(q), int(n)) for s, q, n in e.get("releases", []))
        return {k: AccountantState(history=h, delta=self.delta,
                                   accountant=self.state.accountant).epsilon()
                for k, h in hist.items() if h}

    def run_entries(self, run: str, kind: str) -> list[dict[str, Any]]:
        """This ledger's entries of one run and kind, oldest first."""
        return [e for e in self.entries
                if str(e.get("run", "")) == run and str(e.get("kind", DEFAULT_KIND)) == kind]

    def record_gaussian(self, noise_multiplier: float, releases: int, kind: str,
                        **meta: Any) -> float:
        """Account ``releases`` Gaussian mechanisms of ``noise_multiplier`` (noise std over L2
        sensitivity) as ``kind``; raises PrivacyBudgetExceeded, recording nothing, when they
        would pass the budget. Returns the epsilon after."""
        if self.state.delta is None:
            raise ConfigError("fix the ledger's delta before a release")
        entry = (float(noise_multiplier), 1.0, int(releases))
        after = self.state.epsilon_after(*entry, self.state.delta)
        if self.budget is not None and after > self.budget * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"{kind} would bring epsilon to {after:.3f}, over the budget {self.budget} "
                f"(spent {self.spent():.3f})")
        self.record(self._extended([entry]), kind=kind, **meta)
        return self.spent()

    def summary(self) -> dict[str, Any]:
        """Everything ``seqanom ledger`` shows: site, unit, delta, budget, spent, remaining, runs."""
        return {"site": self.site, "unit": UNIT,
                "accountant": accountant_name(self.state.accountant),
                "delta": self.delta, "budget": self.budget, "epsilon_spent": self.spent(),
                "remaining": self.remaining(), "steps": _total_steps(self), "runs": self.by_run(),
                "by_kind": self.by_kind()}

    # ----------------------------------------------------------------- updates
    def record(self, state: AccountantState, **meta: Any) -> None:
        """Replace the accountant state by ``state`` (which extends it) and log the release."""
        if state.accountant != self.state.accountant:
            raise ConfigError(f"a release accounted with {state.accountant!r} cannot go into a "
                              f"ledger kept with {self.state.accountant!r}")
        old_steps, new_steps = _steps_by_mechanism(self.state), _steps_by_mechanism(state)
        if any(new_steps.get(k, 0) < n for k, n in old_steps.items()):
            raise ConfigError("new accountant history does not extend the ledger's history")
        new = [[s, q, n - old_steps.get((s, q), 0)] for (s, q), n in new_steps.items()
               if n > old_steps.get((s, q), 0)]
        self.state = AccountantState(history=list(state.history), delta=state.delta,
                                     accountant=state.accountant)
        eps = self.spent()
        if self.budget is not None and eps > self.budget * (1 + 1e-9):
            raise PrivacyBudgetExceeded(f"epsilon {eps:.3f} exceeds the budget {self.budget}")
        self.entries.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "releases": new, "epsilon_after": eps, **meta})

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"version": LEDGER_VERSION, "site": self.site, "unit": UNIT, "budget": self.budget,
                "epsilon_spent": self.spent(), "accountant": self.state.to_dict(),
                "entries": self.entries}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        """Rebuild from ``to_dict`` output, refusing a damaged ledger: one whose accountant
        history and release entries disagree would otherwise be read as less spent."""
        if not isinstance(data, dict):
            raise ConfigError(f"a ledger is a JSON object, not {type(data).__name__}")
        if data.get("version") != LEDGER_VERSION:
            raise ConfigError(f"unsupported ledger version {data.get('version')!r}")
        budget = data.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not is_positive_number(budget)):
            raise ConfigError(f"budget must be a positive number or null, not {budget!r}")
        state = AccountantState.from_dict(data["accountant"])
        entries = data.get("entries", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError("'entries' must be a list of release records")
        recorded: dict[tuple[float, float], int] = {}
        for i, e in enumerate(entries):
            try:
                after = float(e["epsilon_after"])
                releases = [(float(s), float(q), int(n)) for s, q, n in e.get("releases", [])]
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"entry {i}: needs epsilon_after and releases of "
                                  f"[noise, rate, steps] ({err})") from err
            if not (math.isfinite(after) and after >= 0) or any(n <= 0 for _, _, n in releases):
                raise ConfigError(f"entry {i}: epsilon_after and steps must be non-negative")
            for s, q, n in releases:
                recorded[(s, q)] = recorded.get((s, q), 0) + n
        if recorded != _steps_by_mechanism(state):
            raise ConfigError(
                f"the accountant history ({sum(n for _, _, n in state.history)} steps) does not match the "
                f"release entries ({sum(recorded.values())} steps); the ledger is damaged, and "
                "reading it could understate what was spent")
        return cls(budget=None if budget is None else float(budget), state=state,
                   entries=list(entries), site=str(data.get("site", "")))

    def to_json(self) -> str:
        """The ledger as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Rebuild from ``to_json`` output."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the ledger atomically (a crash never leaves half a ledger)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """Read a ledger written by ``save``."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            raise ConfigError(f"{path}: cannot read privacy ledger: {err}") from err

    @classmethod
    def open(cls, path: str | Path | None, *, budget: float | None, site: str = "",
             accountant: str = "rdp") -> PrivacyLedger:
        """Load the ledger at ``path`` if it exists, else start an empty one under
        ``accountant``; set the budget. A ledger written with another accountant is refused.

        A budget lowered below what is already spent makes every later training call decline.
        """
        if path is not None and Path(path).is_file():
            ledger = cls.load(path)
            ledger.state.require(accountant, f"privacy ledger {path}")
        else:
            ledger = cls(site=site, state=AccountantState(accountant=accountant))
        if budget is not None:
            ledger.budget = budget
        ledger.site = ledger.site or site
        return ledger


def _steps_by_mechanism(state: AccountantState) -> dict[tuple[float, float], int]:
    """Total steps per (noise multiplier, sample rate); Opacus merges consecutive equal entries."""
    out: dict[tuple[float, float], int] = {}
    for s, q, n in state.history:
        out[(float(s), float(q))] = out.get((float(s), float(q)), 0) + int(n)
    return out


def _total_steps(ledger: PrivacyLedger) -> int:
    return sum(int(n) for _, _, n in ledger.state.history)


def more_recent(a: PrivacyLedger | None, b: PrivacyLedger | None) -> PrivacyLedger | None:
    """Of two copies of one site's ledger, the one with the longer history (never forget spend)."""
    if a is None or b is None:
        return a or b
    return a if _total_steps(a) >= _total_steps(b) else b
