"""``seqanom train --dp --ledger`` and a ledger that cannot be quietly rewritten: the site's
identity and budget, the lock, a missing ledger, the spend written before the model, and a
given noise counted like a planned one (each refusal: exit 2, one line, nothing written)."""

from __future__ import annotations

import pytest

from seqanom_core.ledger_integrity import ledger_lock
from seqanom_core.privacy_ledger import PrivacyLedger
from simulation.cli import main

SMALL = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--max-len", "32",
         "--delta", "1e-5", "--dp-seed", "1"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    d = tmp_path_factory.mktemp("ledger-guarantees")
    assert main(["-q", "synth", "--shoppers", "60", "--out", str(d / "ev.csv"), "--seed", "3"]) == 0
    return d / "ev.csv"


@pytest.fixture()
def spent(tmp_path):
    """A ledger of site-a, budget 3, with a little spent."""
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, budget=3.0, site="site-a")
    ledger.fix_delta(1e-5)
    ledger.record_gaussian(50.0, 1, "training-count", run="r")
    ledger.save(path)
    return path


def _train(events, tmp_path, *extra: str) -> int:
    return main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "model"),
                 "--dp", *extra, *SMALL])


def _error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_another_sites_ledger_and_a_higher_budget_are_refused(events, tmp_path, spent, capsys):
    before = spent.read_bytes()
    err = _error(capsys, _train(events, tmp_path, "--epsilon", "3", "--ledger", str(spent),
                                "--site", "site-b"))
    assert str(spent) in err and "'site-a'" in err and "'site-b'" in err
    err = _error(capsys, _train(events, tmp_path, "--epsilon", "4", "--ledger", str(spent),
                                "--site", "site-a"))
    assert f"seqanom ledger {spent} --raise-budget 4" in err
    assert spent.read_bytes() == before and not (tmp_path / "model").exists()


def test_a_ledger_in_use_is_refused(events, tmp_path, spent, capsys):
    with ledger_lock(spent):
        err = _error(capsys, _train(events, tmp_path, "--epsilon", "3", "--ledger", str(spent),
                                    "--site", "site-a"))
    assert "in use by another training" in err and not (tmp_path / "model").exists()


def test_a_missing_ledger_needs_new_ledger(events, tmp_path, spent, capsys):
    spent.unlink()
    err = _error(capsys, _train(events, tmp_path, "--epsilon", "3", "--ledger", str(spent),
                                "--site", "site-a"))
    assert "missing, but site 'site-a' kept one there" in err and "--new-ledger" in err
    code = _train(events, tmp_path, "--epsilon", "3", "--ledger", str(spent), "--site", "site-a",
                  "--new-ledger")
    assert code == 0, capsys.readouterr().err
    assert PrivacyLedger.load(spent).spent() > 0


def test_the_spend_is_recorded_before_the_model_is_written(events, tmp_path, spent, capsys,
                                                          monkeypatch):
    def fail(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(PrivacyLedger, "save", fail)
    assert _train(events, tmp_path, "--epsilon", "3", "--ledger", str(spent),
                  "--site", "site-a") == 2
    assert "No space left" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()  # no model leaves without its spend recorded


def test_a_given_noise_counts_against_the_budget_and_the_max_noise(events, tmp_path, spent,
                                                                  capsys):
    before = spent.read_bytes()
    err = _error(capsys, _train(events, tmp_path, "--noise-multiplier", "0.3", "--ledger",
                                str(spent), "--site", "site-a"))
    assert "noise multiplier 0.3" in err and "over the budget 3" in err
    assert spent.read_bytes() == before
    err = _error(capsys, _train(events, tmp_path, "--noise-multiplier", "12"))
    assert "above the max noise 10" in err
    assert not (tmp_path / "model").exists()


def test_a_ledger_without_dp_is_refused_not_ignored(events, tmp_path, spent, capsys):
    before = spent.read_bytes()
    code = main(["-q", "train", "--data", str(events), "--out", str(tmp_path / "model"),
                 "--ledger", str(spent), "--site", "site-a", "--epochs", "1"])
    assert "--ledger records what DP-SGD spends: it goes with --dp" in _error(capsys, code)
    assert spent.read_bytes() == before and not (tmp_path / "model").exists()
