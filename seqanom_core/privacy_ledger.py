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

The file is bound to its site and its budget (a header, hashed) and is a hash chain of entries
(``ledger_integrity``): another site's ledger, an edited, reordered or truncated history, a
missing or rolled-back ledger, and a budget that is not the recorded one are refused. A budget
is raised only by ``raise_budget`` (an entry of its own, ``seqanom ledger --raise-budget``); a
lower budget asked for by a run caps that run only. Ledgers of version 1, and the accountant
files of ``seqanom train --ledger`` before it, are read only once converted
(``ledger_migration``).

Over 400 lines: the ledger's queries, its updates and its checked persistence work on one state
and stay together; the file machinery (hash chain, head record, lock) is in ``ledger_integrity``
and the conversion of old formats in ``ledger_migration``.
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

from seqanom_core.config import MAX_NOISE, is_positive_number
from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded
from seqanom_core.ledger_integrity import (
    chain,
    check_head,
    check_missing,
    digest,
    verify_chain,
    write_head,
    write_json_durable,
)
from seqanom_core.privacy import UNIT, AccountantState, accountant_name, noise_within_budget

log = logging.getLogger(__name__)

LEDGER_VERSION = 2  # 2: site and budget in a hashed header, hash-chained entries
DEFAULT_KIND = "model-update"  # the kind of entries that name none (DP-SGD, as before kinds)
BUDGET_KIND = "budget"  # an entry that raises the budget (no release)
_MIGRATE = ("convert it once with 'seqanom ledger {path} --migrate --site NAME --budget EPS' "
            "(its history is kept)")


@dataclass
class PrivacyLedger:
    """Cumulative DP accounting of one site (shopper-level (epsilon, delta))."""

    budget: float | None = None  # epsilon budget; None means no budget is enforced
    state: AccountantState = field(default_factory=AccountantState)
    entries: list[dict[str, Any]] = field(default_factory=list)
    site: str = ""
    header: dict[str, Any] | None = None  # fixed (and hashed) when the first entry is chained
    cap: float | None = None  # this run's lower budget (never saved)

    # ----------------------------------------------------------------- queries
    @property
    def delta(self) -> float | None:
        """The delta all of this ledger's epsilons are stated at (fixed at first use)."""
        return self.state.delta

    def spent(self) -> float:
        """Epsilon spent so far (0 with no history)."""
        return self.state.epsilon()

    def limit(self) -> float | None:
        """The budget this run enforces: the ledger's, or this run's lower ``cap``."""
        caps = [b for b in (self.budget, self.cap) if b is not None]
        return min(caps) if caps else None

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
        if self.limit() is None:
            raise ConfigError("planning noise needs a privacy budget")
        if self.state.delta is None:
            raise ConfigError("fix the ledger's delta before planning noise")
        try:
            return noise_within_budget(self._extended(reserved), self.limit(), self.state.delta,  # type: ignore[arg-type]
                                       sample_rate,
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
        limit = self.limit()
        if limit is not None and after > limit * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"this round would bring epsilon to {after:.3f}, over the budget {limit:g} "
                f"(spent {self.spent():.3f})")
        return after

    def remaining(self) -> float | None:
        """Epsilon left under the budget (None without a budget; never negative)."""
        limit = self.limit()
        return None if limit is None else max(limit - self.spent(), 0.0)

    def by_run(self) -> list[dict[str, Any]]:
        """Spend per run, in the order runs first trained: rounds, steps, time span,
        ``epsilon_added`` (how much the run raised the cumulative epsilon; these add up to the
        total) and ``epsilon_alone`` (the run's releases accounted on their own).

        Entries written before run ids were recorded (or by ``seqanom train``) fall under run "".
        """
        runs: dict[str, dict[str, Any]] = {}
        before = 0.0
        for e in self.entries:
            if e.get("kind") == BUDGET_KIND:
                continue
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
        limit = self.limit()
        if limit is not None and after > limit * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"{kind} would bring epsilon to {after:.3f}, over the budget {limit:g} "
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
        old_steps, new_steps = steps_by_mechanism(self.state), steps_by_mechanism(state)
        if any(new_steps.get(k, 0) < n for k, n in old_steps.items()):
            raise ConfigError("new accountant history does not extend the ledger's history")
        new = [[s, q, n - old_steps.get((s, q), 0)] for (s, q), n in new_steps.items()
               if n > old_steps.get((s, q), 0)]
        after = AccountantState(history=list(state.history), delta=state.delta,
                                accountant=state.accountant)
        eps, limit = after.epsilon(), self.limit()
        if limit is not None and eps > limit * (1 + 1e-9):  # the ledger is left as it was
            raise PrivacyBudgetExceeded(f"epsilon {eps:.3f} exceeds the budget {limit:g}")
        self.state = after
        self.append_entry({"time": now(), "releases": new, "epsilon_after": eps,
                      "delta": self.state.delta, **meta})

    def raise_budget(self, budget: float, **meta: Any) -> None:
        """Raise the ledger's budget to ``budget`` (an entry of its own, logged)."""
        if isinstance(budget, bool) or not is_positive_number(budget):
            raise ConfigError(f"a budget must be a positive number, not {budget!r}")
        if self.budget is not None and budget <= self.budget:
            raise ConfigError(f"--raise-budget {budget:g} is not above the ledger's budget "
                              f"{self.budget:g}; a run asks for a lower one with --epsilon")
        log.warning("site %r: privacy budget raised from %s to %g (spent %.3f)", self.site,
                    self.budget, budget, self.spent())
        self.append_entry({"time": now(), "kind": BUDGET_KIND, "budget": float(budget),
                      "previous": self.budget, "releases": [],
                      "epsilon_after": self.spent(), **meta})
        self.budget = float(budget)

    def use_budget(self, budget: float | None, where: str) -> None:
        """Check a run's requested ``budget`` against the ledger's: above it is refused (raising
        is explicit), below it caps this run, None takes the ledger's."""
        if budget is None or self.budget is None:
            self.cap = budget
            return
        if budget > self.budget * (1 + 1e-9):
            raise ConfigError(
                f"{where}: epsilon {budget:g} asked for, but this ledger's budget is "
                f"{self.budget:g}; a budget is raised only explicitly: seqanom ledger {where} "
                f"--raise-budget {budget:g}")
        self.cap = budget if budget < self.budget else None
        if self.cap is not None:
            log.info("%s: this run is capped at epsilon %g (ledger budget %g)", where, budget,
                     self.budget)

    def header_dict(self) -> dict[str, Any]:
        """The hashed header: version, site, unit, accountant, the budget it started with."""
        if self.header is None:
            self.header = {"version": LEDGER_VERSION, "site": self.site, "unit": UNIT,
                           "accountant": self.state.accountant, "budget": self.budget,
                           "created": now()}
        return self.header

    def head_hash(self) -> str:
        """The hash of the last entry (of the header when there is none)."""
        return str(self.entries[-1]["hash"]) if self.entries else digest(self.header_dict())

    def append_entry(self, entry: dict[str, Any]) -> None:
        """Chain ``entry`` after the last one (the accountant state is the caller's)."""
        self.entries.append(chain(entry, self.head_hash()))

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the header, the chained entries, and what they add up to)."""
        return {"version": LEDGER_VERSION, "site": self.site, "unit": UNIT, "budget": self.budget,
                "epsilon_spent": self.spent(), "accountant": self.state.to_dict(),
                "header": self.header_dict(), "entries": self.entries, "head": self.head_hash()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        """Rebuild from ``to_dict`` output, refusing a damaged or edited ledger: one whose chain
        is broken, or whose accountant history, delta, site or budget disagree with its chained
        entries, would otherwise be read as less spent (or as another site's, or a larger
        budget)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a ledger is a JSON object, not {type(data).__name__}")
        if data.get("version") != LEDGER_VERSION:
            old = data.get("version") == 1 or ("version" not in data and "history" in data)
            raise ConfigError(("an old-format ledger (" + ("version 1" if data.get("version") == 1
                               else "a 'seqanom train --ledger' accountant file") + "): "
                               + _MIGRATE) if old else
                              f"unsupported ledger version {data.get('version')!r}")
        header = data["header"]
        if not isinstance(header, dict) or header.get("version") != LEDGER_VERSION:
            raise ConfigError("the ledger's header is missing or damaged")
        state = AccountantState.from_dict(data["accountant"])
        entries = data.get("entries", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError("'entries' must be a list of release records")
        head = verify_chain(digest(header), entries)
        if data.get("head") != head:
            raise ConfigError(f"the ledger ends at entry {len(entries) - 1} but its head names "
                              "a later one (entries were removed); the ledger is refused")
        budget = check_budget(header.get("budget"))
        recorded: dict[tuple[float, float], int] = {}
        deltas: set[float] = set()
        for i, e in enumerate(entries):
            if e.get("kind") == BUDGET_KIND:
                budget = check_budget(e.get("budget"))
                continue
            try:
                after = float(e["epsilon_after"])
                releases = [(float(s), float(q), int(n)) for s, q, n in e.get("releases", [])]
                if releases:
                    deltas.add(float(e["delta"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"entry {i}: needs epsilon_after, delta and releases of "
                                  f"[noise, rate, steps] ({err})") from err
            if not (math.isfinite(after) and after >= 0) or any(n <= 0 for _, _, n in releases):
                raise ConfigError(f"entry {i}: epsilon_after and steps must be non-negative")
            for s, q, n in releases:
                recorded[(s, q)] = recorded.get((s, q), 0) + n
        checks = [
            (data.get("site") == header.get("site"), f"site {data.get('site')!r} is not the "
             f"header's {header.get('site')!r}"),
            (data.get("budget") == budget, f"budget {data.get('budget')!r} is not the recorded "
             f"{budget!r} (a budget is raised with 'seqanom ledger --raise-budget')"),
            (state.accountant == header.get("accountant"), f"accountant {state.accountant!r} is "
             f"not the header's {header.get('accountant')!r}"),
            (not deltas or deltas == {state.delta}, f"delta {state.delta} is not the delta "
             f"{sorted(deltas)} its entries were recorded at"),
            (recorded == steps_by_mechanism(state), "the accountant history "
             f"({sum(n for _, _, n in state.history)} steps) does not match the release entries "
             f"({sum(recorded.values())} steps)")]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"{what}; the ledger is damaged or edited, and reading it "
                                  "could understate what was spent")
        return cls(budget=budget, state=state, entries=list(entries),
                   site=str(header.get("site", "")), header=dict(header))

    def to_json(self) -> str:
        """The ledger as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Rebuild from ``to_json`` output."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the ledger durably (temporary file, fsync, rename: a crash never leaves half a
        ledger), then the site's head record of it."""
        write_json_durable(path, self.to_dict())
        write_head(path, self.site, len(self.entries), self.head_hash())

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """Read a ledger written by ``save``; refused when older than the site's head record."""
        try:
            ledger = cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            raise ConfigError(f"{path}: cannot read privacy ledger: "
                              f"{str(err).replace('{path}', str(path))}") from err
        check_head(path, [digest(ledger.header_dict()), *(str(e["hash"]) for e in ledger.entries)])
        return ledger

    @classmethod
    def open(cls, path: str | Path | None, *, budget: float | None, site: str = "",
             accountant: str = "rdp", new_ledger: bool = False) -> PrivacyLedger:
        """Load the site's ledger at ``path``, or start one (its budget: ``budget``). Refused:
        another site's ledger, one written with another accountant, a ``budget`` above the
        ledger's (a lower one caps this run), and a missing ledger where the site kept one
        (unless ``new_ledger``: start a new one when it is missing, never over one)."""
        if path is not None and Path(path).is_file():  # new_ledger never replaces one
            ledger = cls.load(path)
            if site and ledger.site and ledger.site != site:
                raise ConfigError(f"{path}: privacy ledger of site {ledger.site!r}, not of "
                                  f"this site {site!r}; give this site's own ledger")
            ledger.state.require(accountant, f"privacy ledger {path}")
            ledger.use_budget(budget, str(path))
            return ledger
        if path is not None:
            check_missing(path, new_ledger)
        if budget is None:
            raise ConfigError(f"{path or 'the site'}: a new privacy ledger takes its budget from "
                              "the training that creates it: give an epsilon budget")
        return cls(budget=check_budget(budget), site=site,
                   state=AccountantState(accountant=accountant))


def now() -> str:
    """The time of an entry (UTC, ISO 8601)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_budget(budget: Any) -> float | None:
    """A budget as stored: a positive finite number, or None."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not is_positive_number(budget)):
        raise ConfigError(f"budget must be a positive number or null, not {budget!r}")
    return None if budget is None else float(budget)


def steps_by_mechanism(state: AccountantState) -> dict[tuple[float, float], int]:
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
    return a if (_total_steps(a), len(a.entries)) >= (_total_steps(b), len(b.entries)) else b
