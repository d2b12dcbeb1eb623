"""The site's privacy ledger: planning within budget, declining, persistence, merged histories."""

from __future__ import annotations

import copy
import json

import pytest

from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded
from seqanom_core.privacy import AccountantState
from seqanom_core.privacy_ledger import PrivacyLedger, more_recent


def _spend(ledger: PrivacyLedger, sigma: float, q: float, steps: int, rnd: int) -> None:
    acc = ledger.state.accountant_obj()
    for _ in range(steps):  # what Opacus does: one step() per optimizer step (merged entries)
        acc.step(noise_multiplier=sigma, sample_rate=q)
    ledger.record(AccountantState(history=list(acc.history), delta=ledger.delta), round=rnd)


def test_planned_noise_keeps_the_whole_run_within_budget():
    ledger = PrivacyLedger(budget=4.0)
    ledger.fix_delta(1e-5)
    q, steps = 0.1, 20
    for r in range(5):
        sigma = ledger.plan_noise(q, steps, rounds_left=5 - r)
        ledger.check_affordable(sigma, q, steps)
        _spend(ledger, sigma, q, steps, r)
    assert 3.5 < ledger.spent() <= 4.0
    assert [e["round"] for e in ledger.entries] == [0, 1, 2, 3, 4]


def test_a_release_over_budget_is_refused():
    ledger = PrivacyLedger(budget=1.0)
    ledger.fix_delta(1e-5)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check_affordable(0.5, 0.5, 100)
    assert ledger.spent() == 0.0


def test_ledger_round_trips_and_the_longer_copy_wins(tmp_path):
    ledger = PrivacyLedger(budget=8.0, site="a")
    ledger.fix_delta(1e-5)
    _spend(ledger, 1.0, 0.1, 10, 1)
    ledger.save(tmp_path / "l.json")
    again = PrivacyLedger.open(tmp_path / "l.json", budget=8.0)
    assert again.spent() == pytest.approx(ledger.spent())
    _spend(again, 1.0, 0.1, 10, 2)
    assert more_recent(ledger, again) is again and more_recent(None, ledger) is ledger
    with pytest.raises(Exception, match="does not extend"):
        ledger.record(AccountantState(history=[], delta=1e-5))


def test_spend_is_broken_down_by_run():
    ledger = PrivacyLedger(budget=8.0, site="a")
    ledger.fix_delta(1e-5)
    for run, rounds in (("r1", (1, 2)), ("r2", (1,))):
        for rnd in rounds:
            acc = ledger.state.accountant_obj()
            for _ in range(10):
                acc.step(noise_multiplier=1.0, sample_rate=0.1)
            ledger.record(AccountantState(history=list(acc.history), delta=1e-5), run=run,
                          round=rnd)
    first, second = ledger.by_run()
    assert (first["run"], first["rounds"], first["steps"]) == ("r1", [1, 2], 20)
    assert (second["run"], second["rounds"], second["steps"]) == ("r2", [1], 10)
    assert first["epsilon_added"] + second["epsilon_added"] == pytest.approx(ledger.spent())
    assert first["epsilon_alone"] == pytest.approx(ledger.entries[1]["epsilon_after"])
    assert 0 < second["epsilon_added"] < second["epsilon_alone"] < first["epsilon_alone"]
    s = ledger.summary()
    assert s["remaining"] == pytest.approx(8.0 - ledger.spent()) and s["steps"] == 30


def _real_ledger() -> dict:
    ledger = PrivacyLedger(budget=8.0, site="s")
    ledger.fix_delta(1e-5)
    _spend(ledger, 1.0, 0.1, 30, 1)
    _spend(ledger, 1.2, 0.1, 30, 2)
    return ledger.to_dict()


@pytest.mark.parametrize("damage", [
    lambda d: d["accountant"].update(history=[]),  # would read as nothing spent
    lambda d: d["accountant"].update(history=[[50.0, 0.01, 1]]),  # would read as far less
    lambda d: d.update(entries=[]),
    lambda d: d.update(entries="abc"),
    lambda d: d["entries"][0].update(releases=[[1]]),
    lambda d: d["entries"][0].update(epsilon_after="x"),
    lambda d: d.update(budget="abc"),
    lambda d: d.update(budget=float("nan")),
    lambda d: d.update(budget=-1),
    lambda d: d["accountant"].update(delta=None),
])
def test_a_damaged_ledger_is_refused_not_read_as_less_spent(tmp_path, damage):
    data = _real_ledger()
    assert PrivacyLedger.from_dict(copy.deepcopy(data)).spent() > 0  # the undamaged one reads
    damage(data)
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="ledger.json"):
        PrivacyLedger.load(path)
