"""Converting an old-format privacy ledger (version 1, or an accountant file of the old
``seqanom train --ledger``) into a chained one: done once, explicitly (``seqanom ledger PATH
--migrate``); a ledger is never read in an old format otherwise."""

from __future__ import annotations

from typing import Any

from seqanom_core.errors import ConfigError
from seqanom_core.privacy import AccountantState
from seqanom_core.privacy_ledger import (
    DEFAULT_KIND,
    PrivacyLedger,
    check_budget,
    now,
    steps_by_mechanism,
)


def migrate_ledger(data: Any, *, site: str, budget: float | None) -> PrivacyLedger:
    """A version-2 ledger holding the old ledger's history (its entries, or one entry for an
    accountant file), bound to ``site`` and to ``budget`` (default: a version-1 ledger's own)."""
    if not isinstance(data, dict) or data.get("version") not in (1, None):
        raise ConfigError("not an old-format ledger (nothing to migrate)")
    v1 = data.get("version") == 1
    state = AccountantState.from_dict(data["accountant"] if v1 else data)
    budget = budget if budget is not None else (data.get("budget") if v1 else None)
    if not site or budget is None:
        raise ConfigError("migrating a ledger needs --site NAME and --budget EPS (the budget "
                          "the site keeps from now on)")
    ledger = PrivacyLedger(budget=check_budget(budget), site=site,
                           state=AccountantState(accountant=state.accountant))
    ledger.header_dict()["migrated_from"] = "version 1" if v1 else "accountant file"
    old = list(data.get("entries", [])) if v1 else [
        {"time": now(), "run": "", "kind": DEFAULT_KIND, "epsilon_after": state.epsilon(),
         "releases": [[s, q, n] for (s, q), n in steps_by_mechanism(state).items()]}]
    for e in old:
        ledger.append_entry({**e, "delta": state.delta})
    ledger.state = state
    return PrivacyLedger.from_dict(ledger.to_dict())  # every check of a loaded ledger
