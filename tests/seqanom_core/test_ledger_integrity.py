"""A ledger that cannot be quietly rewritten: bound to its site and budget, hash-chained,
locked while used, its absence or rollback noticed, old formats converted only explicitly."""

from __future__ import annotations

import json
import threading
import time

import pytest

from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded
from seqanom_core.ledger_integrity import LedgerInUse, head_path, ledger_lock
from seqanom_core.ledger_migration import migrate_ledger
from seqanom_core.privacy import AccountantState, fixed_noise_within_budget
from seqanom_core.privacy_ledger import PrivacyLedger


def _spend(ledger: PrivacyLedger, sigma: float = 1.0, steps: int = 20) -> None:
    ledger.fix_delta(1e-5)
    ledger.record(AccountantState(history=[*ledger.state.history, (sigma, 0.1, steps)],
                                  delta=ledger.delta, accountant=ledger.state.accountant),
                  run="r", round=len(ledger.entries) + 1)


def _saved(tmp_path, rounds: int = 3, budget: float = 8.0):
    path = tmp_path / "site-a.json"
    ledger = PrivacyLedger.open(path, budget=budget, site="site-a")
    for _ in range(rounds):
        _spend(ledger)
    ledger.save(path)
    return path, ledger


def _refused(path) -> str:
    with pytest.raises(ConfigError) as err:
        PrivacyLedger.open(path, budget=None, site="site-a")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ----------------------------------------------------------------------------- 1. identity, budget
def test_a_ledger_of_another_site_is_refused(tmp_path):
    path, _ = _saved(tmp_path)
    with pytest.raises(ConfigError, match="site 'site-a', not of this site 'site-b'") as err:
        PrivacyLedger.open(path, budget=None, site="site-b")
    assert str(path) in str(err.value)


def test_the_budget_is_the_ledgers_and_is_raised_only_explicitly(tmp_path):
    path, _ = _saved(tmp_path, rounds=1, budget=5.0)
    with pytest.raises(ConfigError, match="--raise-budget 9"):
        PrivacyLedger.open(path, budget=9.0, site="site-a")
    capped = PrivacyLedger.open(path, budget=4.5, site="site-a")  # lower: this run's cap
    assert capped.budget == 5.0 and capped.limit() == 4.5
    ledger = PrivacyLedger.open(path, budget=None, site="site-a")
    ledger.raise_budget(9.0)
    ledger.save(path)
    again = PrivacyLedger.open(path, budget=9.0, site="site-a")
    assert again.budget == 9.0 and again.entries[-1]["kind"] == "budget"
    assert again.entries[-1]["previous"] == 5.0
    with pytest.raises(ConfigError, match="not above"):
        again.raise_budget(8.0)


def test_a_new_ledger_takes_its_budget_from_its_first_training(tmp_path):
    with pytest.raises(ConfigError, match="new privacy ledger takes its budget"):
        PrivacyLedger.open(tmp_path / "l.json", budget=None, site="s")
    assert PrivacyLedger.open(tmp_path / "l.json", budget=3.0, site="s").budget == 3.0


# ----------------------------------------------------------------------------- 2. hash chain
@pytest.mark.parametrize("edit, where", [
    (lambda d: d["entries"][1]["releases"][0].__setitem__(0, 100.0), "entry 1 does not match"),
    (lambda d: d["entries"].__setitem__(slice(0, 2), d["entries"][1::-1]), "entry 0 does not follow"),
    (lambda d: d["entries"].pop(1), "entry 1 does not follow entry 0"),
    (lambda d: d["header"].__setitem__("budget", 100.0), "entry 0 does not follow the header"),
])
def test_an_edited_reordered_or_cut_history_is_refused(tmp_path, edit, where):
    path, _ = _saved(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    assert where in _refused(path)


def test_edited_delta_noise_budget_or_truncated_tail_is_refused(tmp_path):
    path, ledger = _saved(tmp_path)
    good = json.loads(path.read_text())
    edits = {
        "delta": lambda d: d["accountant"].__setitem__("delta", 0.2),
        "noise x100": lambda d: d["accountant"].__setitem__(
            "history", [[s * 100, q, n] for s, q, n in d["accountant"]["history"]]),
        "budget": lambda d: d.__setitem__("budget", 100.0),
        "tail": lambda d: (d["entries"].pop(), d["accountant"].__setitem__(
            "history", [[1.0, 0.1, 100]])),
    }
    for name, edit in edits.items():
        data = json.loads(json.dumps(good))
        edit(data)
        path.write_text(json.dumps(data))
        assert "refused" in _refused(path) or "damaged" in _refused(path), name
    path.write_text(json.dumps(good))
    assert PrivacyLedger.open(path, budget=None, site="site-a").spent() == ledger.spent()


def test_old_formats_are_refused_until_migrated(tmp_path):
    path = tmp_path / "acc.json"
    state = AccountantState(history=[(1.0, 0.1, 50)], delta=1e-5)
    state.save(path)
    assert "--migrate --site NAME --budget EPS" in _refused(path)
    ledger = migrate_ledger(json.loads(path.read_text()), site="site-a", budget=8.0)
    assert ledger.spent() == pytest.approx(state.epsilon())
    assert ledger.header_dict()["migrated_from"] == "accountant file"
    ledger.save(path)
    assert PrivacyLedger.open(path, budget=8.0, site="site-a").spent() == pytest.approx(
        state.epsilon())


# ----------------------------------------------------------------------------- 3. lock
def test_two_concurrent_trainings_cannot_both_spend_the_same_budget(tmp_path):
    path = tmp_path / "l.json"
    sigma, q, steps = 0.9, 0.1, 200
    one = AccountantState(history=[(sigma, q, steps)], delta=1e-5).epsilon()
    two = AccountantState(history=[(sigma, q, steps)] * 2, delta=1e-5).epsilon()
    budget = (one + two) / 2  # each alone fits, both together do not
    outcomes: list[str] = []

    def train() -> None:
        with ledger_lock(path, timeout=30):
            ledger = PrivacyLedger.open(path, budget=budget, site="s")
            ledger.fix_delta(1e-5)
            try:
                ledger.check_affordable(sigma, q, steps)
            except PrivacyBudgetExceeded:
                outcomes.append("declined")
                return
            time.sleep(0.3)  # training; the other one waits for the lock
            ledger.record(AccountantState(history=[*ledger.state.history, (sigma, q, steps)],
                                          delta=1e-5), run="t")
            ledger.save(path)
            outcomes.append("trained")

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["declined", "trained"]
    assert PrivacyLedger.open(path, budget=None, site="s").spent() <= budget


def test_a_held_lock_refuses_after_its_timeout(tmp_path):
    path = tmp_path / "l.json"
    with ledger_lock(path):
        t0 = time.monotonic()
        with pytest.raises(LedgerInUse, match="in use by another training") as err:
            with ledger_lock(path, timeout=0.2):
                pass
        assert 0.15 < time.monotonic() - t0 < 5 and str(path) in str(err.value)
    with ledger_lock(path, timeout=0):  # released
        pass


# ----------------------------------------------------------------------------- 4. missing, rolled back
def test_a_missing_ledger_where_the_site_kept_one_is_refused(tmp_path):
    path, _ = _saved(tmp_path)
    path.unlink()
    with pytest.raises(ConfigError, match="missing, but site 'site-a' kept one there"):
        PrivacyLedger.open(path, budget=8.0, site="site-a")
    fresh = PrivacyLedger.open(path, budget=8.0, site="site-a", new_ledger=True)
    assert fresh.spent() == 0.0
    fresh.save(path)
    assert head_path(path).exists()
    assert PrivacyLedger.open(path, budget=8.0, site="site-a").entries == []


def test_a_ledger_rolled_back_to_an_older_copy_is_refused(tmp_path):
    path, ledger = _saved(tmp_path, rounds=1)
    old = path.read_bytes()
    _spend(ledger)
    ledger.save(path)
    path.write_bytes(old)
    assert "rolled back to an older copy" in _refused(path)
    other = PrivacyLedger.open(tmp_path / "other.json", budget=8.0, site="site-a")
    _spend(other)
    _spend(other, sigma=2.0)
    other.save(tmp_path / "other.json")
    path.write_bytes((tmp_path / "other.json").read_bytes())
    assert "does not continue the one this site recorded" in _refused(path)


# ----------------------------------------------------------------------------- 6, 7. fixed noise
def test_a_given_noise_counts_against_the_budget_and_the_max_noise():
    prior = AccountantState(history=[(1.0, 0.1, 100)], delta=1e-5)
    with pytest.raises(PrivacyBudgetExceeded, match="over the budget 3"):
        fixed_noise_within_budget(prior, 0.5, 3.0, 1e-5, 0.1, 500)
    with pytest.raises(PrivacyBudgetExceeded, match="above the max noise 10"):
        fixed_noise_within_budget(prior, 12.0, None, 1e-5, 0.1, 5)
    after = fixed_noise_within_budget(prior, 2.0, 30.0, 1e-5, 0.1, 10)
    assert after == prior.epsilon_after(2.0, 0.1, 10, 1e-5)
