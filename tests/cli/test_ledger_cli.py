"""``seqanom ledger``: a site's spend per run and in total, from either ledger file kind."""

from __future__ import annotations

import json

from seqanom_core.privacy import AccountantState
from seqanom_core.privacy_ledger import PrivacyLedger
from simulation import cli


def _ledger(tmp_path):
    ledger = PrivacyLedger(budget=5.0, site="shop-1")
    ledger.fix_delta(1e-5)
    for rnd in (1, 2):
        acc = ledger.state.accountant_obj()
        for _ in range(5):
            acc.step(noise_multiplier=1.2, sample_rate=0.2)
        ledger.record(AccountantState(history=list(acc.history), delta=1e-5), run="77",
                      round=rnd)
    ledger.save(tmp_path / "l.json")
    return ledger


def test_ledger_shows_spend_per_run_total_and_remaining(tmp_path, capsys):
    ledger = _ledger(tmp_path)
    assert cli.main(["ledger", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert "(site shop-1)" in out and "delta 1.0e-05; budget 5.000" in out
    assert f"epsilon spent {ledger.spent():.3f}; remaining {5.0 - ledger.spent():.3f}" in out
    assert "77" in out and "1,2" in out
    assert cli.main(["ledger", str(tmp_path / "l.json"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["run"] == "77" and data["epsilon_spent"] == ledger.spent()


def test_ledger_refuses_an_old_accountant_file_until_migrated(tmp_path, capsys):
    state = AccountantState(history=[(1.0, 0.1, 50)], delta=1e-5)
    state.save(tmp_path / "acc.json")
    assert cli.main(["ledger", str(tmp_path / "acc.json")]) == 2
    err = capsys.readouterr().err
    assert "acc.json" in err and "--migrate --site NAME --budget EPS" in err
    assert cli.main(["ledger", str(tmp_path / "acc.json"), "--migrate", "--site", "shop-1",
                     "--budget", "8"]) == 0
    assert (tmp_path / "acc.json.old").exists()
    capsys.readouterr()
    assert cli.main(["ledger", str(tmp_path / "acc.json")]) == 0
    out = capsys.readouterr().out
    assert f"epsilon spent {state.epsilon():.3f}" in out and "(site shop-1)" in out
    assert "budget 8.000" in out
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["ledger", str(tmp_path / "bad.json")]) == 2
    assert "cannot read privacy ledger" in capsys.readouterr().err


def test_raising_a_budget_is_an_explicit_recorded_command(tmp_path, capsys):
    _ledger(tmp_path)
    path = str(tmp_path / "l.json")
    assert cli.main(["ledger", path, "--raise-budget", "4"]) == 2
    assert "not above the ledger's budget 5" in capsys.readouterr().err
    assert cli.main(["ledger", path, "--raise-budget", "7"]) == 0
    assert "raised from 5.0 to 7" in capsys.readouterr().out
    ledger = PrivacyLedger.load(path)
    assert ledger.budget == 7.0 and ledger.entries[-1]["kind"] == "budget"
    assert cli.main(["ledger", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == 7.0
