"""``seqanom train --dp --ledger``: the accountant is chosen and kept, and too little budget left
refuses (exit 2, one line), writing no model and leaving the ledger as it was."""

from __future__ import annotations

import json

import pytest

from seqanom_core.privacy import AccountantState, noise_for_budget
from seqanom_core.privacy_ledger import PrivacyLedger
from simulation.cli import main

SMALL = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "32",
         "--delta", "1e-5", "--dp-seed", "1"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    assert main(["-q", "synth", "--shoppers", "60", "--out", str(d / "ev.csv"), "--seed", "3"]) == 0
    return d / "ev.csv"


def _nearly_spent(path, accountant: str = "rdp") -> float:
    """A ledger of site "s" with epsilon 7.9 spent and a budget 1e-3 above that."""
    z = noise_for_budget(AccountantState(accountant=accountant), 7.9, 1e-5, 0.1, 1000)
    state = AccountantState(history=[(z, 0.1, 1000)], delta=1e-5, accountant=accountant)
    ledger = PrivacyLedger.open(path, budget=float(f"{state.epsilon() + 1e-3:.6f}"), site="s",
                                accountant=accountant)
    ledger.fix_delta(1e-5)
    ledger.record(state)
    ledger.save(path)
    return state.epsilon()


def _error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_too_little_budget_left_refuses_and_writes_nothing(events, tmp_path, capsys):
    ledger = tmp_path / "acc.json"
    spent = _nearly_spent(ledger)
    before = ledger.read_bytes()
    code = main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "model"), "--dp",
                 "--epsilon", f"{spent + 1e-3:.6f}", "--ledger", str(ledger), "--site", "s", *SMALL])
    err = _error(capsys, code)
    assert "too little privacy budget left" in err and "max noise 10" in err
    assert not (tmp_path / "model").exists()
    assert ledger.read_bytes() == before
    # a larger --max-noise lets it train (at that noise), and the ledger then grows
    code = main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "model"), "--dp",
                 "--epsilon", f"{spent + 1e-3:.6f}", "--ledger", str(ledger), "--site", "s",
                 "--max-noise", "1000", *SMALL])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "model").is_dir()
    assert PrivacyLedger.load(ledger).spent() > spent


def test_the_ledger_keeps_its_accountant(events, tmp_path, capsys):
    ledger = tmp_path / "acc.json"
    code = main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "m1"), "--dp",
                 "--epsilon", "8", "--accountant", "prv", "--ledger", str(ledger), "--site", "s",
                 *SMALL])
    assert code == 0, capsys.readouterr().err
    assert json.loads(ledger.read_text())["accountant"]["accountant"] == "prv"
    meta = json.loads((tmp_path / "m1" / "metadata.json").read_text())
    assert meta["privacy"]["accountant"].startswith("Opacus PRV")
    before = ledger.read_bytes()
    code = main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "m2"), "--dp",
                 "--epsilon", "8", "--ledger", str(ledger), "--site", "s", *SMALL])  # rdp by default
    err = _error(capsys, code)
    assert "acc.json" in err and "'prv'" in err and "'rdp'" in err
    assert ledger.read_bytes() == before and not (tmp_path / "m2").exists()
    capsys.readouterr()
    assert main(["ledger", str(ledger)]) == 0
    assert "accountant: Opacus PRV" in capsys.readouterr().out
