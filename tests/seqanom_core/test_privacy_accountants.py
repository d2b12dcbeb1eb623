"""Opacus' RDP and PRV accountants: chosen in config, kept in the ledger, never read as the other;
and the one max-noise rule of a federated site and of ``seqanom train --dp``."""

from __future__ import annotations

import pytest
import torch

from seqanom_core.config import MAX_NOISE, DPConfig, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.errors import ConfigError, PrivacyBudgetExceeded
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.models import build_model
from seqanom_core.privacy import AccountantState, noise_for_budget, noise_within_budget
from seqanom_core.privacy_ledger import PrivacyLedger
from seqanom_core.sequences import build_sequences, vocab_sizes
from seqanom_core.training import train_model

DPSGD = [(1.0, 1 / 11, 220)]  # the simulate defaults' shape: q 1/11, 220 steps


def test_prv_is_opacus_prv_and_tighter_than_rdp_at_the_same_noise():
    from opacus.accountants import PRVAccountant

    rdp = AccountantState(history=list(DPSGD), delta=1e-5)
    prv = AccountantState(history=list(DPSGD), delta=1e-5, accountant="prv")
    acc = PRVAccountant()
    acc.history = list(DPSGD)
    assert prv.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert prv.epsilon() < 0.95 * rdp.epsilon()  # measured: 9.46 against 10.45


def test_prv_needs_less_noise_for_the_same_budget_and_stays_within_it():
    q, steps = 1 / 11, 220
    rdp = noise_for_budget(AccountantState(), 8.0, 1e-5, q, steps)
    prv_state = AccountantState(accountant="prv")
    prv = noise_for_budget(prv_state, 8.0, 1e-5, q, steps)
    assert prv < rdp
    assert prv_state.epsilon_after(prv, q, steps, 1e-5) <= 8.0
    assert prv_state.epsilon_after(prv / 1.02, q, steps, 1e-5) > 8.0  # within about 1%


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_gaussian_mechanism_entry_composes(accountant):
    """A plain Gaussian release (noise z, rate 1, one step) is accounted, alone and mixed."""
    alone = AccountantState(history=[(3.0, 1.0, 1)], delta=1e-5, accountant=accountant)
    mixed = AccountantState(history=[*DPSGD, (3.0, 1.0, 1)], delta=1e-5, accountant=accountant)
    dpsgd = AccountantState(history=list(DPSGD), delta=1e-5, accountant=accountant)
    assert 0 < alone.epsilon() < 10
    assert mixed.epsilon() > dpsgd.epsilon() and mixed.epsilon() > alone.epsilon()
    twice = AccountantState(history=[(3.0, 1.0, 1), *DPSGD, (3.0, 1.0, 1)], delta=1e-5,
                            accountant=accountant)
    assert twice.epsilon() > mixed.epsilon()


def test_unknown_accountant_is_refused():
    with pytest.raises(ConfigError, match="unsupported accountant 'gdp'"):
        AccountantState.from_dict({"accountant": "gdp", "history": [], "delta": None})
    with pytest.raises(ConfigError, match="accountant must be one of rdp, prv"):
        DPConfig(epsilon=8.0, accountant="gdp")
    with pytest.raises(ConfigError, match="accountant"):
        settings_from_run_config({"dp": True, "accountant": "pld"})
    assert settings_from_run_config({"dp": True, "accountant": "prv"}).train.dp.accountant == "prv"


def _spent_ledger(accountant: str, path) -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, budget=8.0, site="s", accountant=accountant)
    ledger.fix_delta(1e-5)
    ledger.record(AccountantState(history=[(1.2, 0.1, 50)], delta=1e-5, accountant=accountant),
                  round=1)
    ledger.save(path)
    return ledger


def test_a_ledger_is_never_read_under_another_accountant(tmp_path):
    path = tmp_path / "site.json"
    rdp = _spent_ledger("rdp", path)
    with pytest.raises(ConfigError) as err:
        PrivacyLedger.open(path, budget=8.0, accountant="prv")
    message = str(err.value)
    assert "site.json" in message and "'rdp'" in message and "'prv'" in message
    assert "\n" not in message
    again = PrivacyLedger.open(path, budget=8.0, accountant="rdp")
    assert again.spent() == rdp.spent() and again.summary()["accountant"] == "Opacus RDP"
    with pytest.raises(ConfigError, match="cannot go into a ledger kept with 'rdp'"):
        again.record(AccountantState(history=[(1.2, 0.1, 60)], delta=1e-5, accountant="prv"))


def test_a_prv_ledger_round_trips_and_says_so(tmp_path):
    path = tmp_path / "site.json"
    ledger = _spent_ledger("prv", path)
    again = PrivacyLedger.open(path, budget=8.0, accountant="prv")
    assert again.state.accountant == "prv" and again.summary()["accountant"] == "Opacus PRV"
    assert again.spent() == pytest.approx(ledger.spent())
    assert again.spent() < AccountantState(history=[(1.2, 0.1, 50)], delta=1e-5).epsilon()
    assert again.by_run()[0]["epsilon_alone"] == pytest.approx(again.spent())
    with pytest.raises(ConfigError, match="'prv'.*'rdp'"):
        PrivacyLedger.open(path, budget=8.0)  # the default accountant is rdp


def _nearly_spent(accountant: str) -> AccountantState:
    z = noise_for_budget(AccountantState(accountant=accountant), 7.9, 1e-5, 0.2, 100)
    return AccountantState(history=[(z, 0.2, 100)], delta=1e-5, accountant=accountant)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_one_max_noise_rule_for_sites_and_single_site_training(accountant, small_split):
    state = _nearly_spent(accountant)
    target = state.epsilon() + 0.002  # fits only under noise far above the max noise
    with pytest.raises(PrivacyBudgetExceeded, match="too little privacy budget left"):
        noise_within_budget(state, target, 1e-5, 0.5, 4)
    if accountant == "rdp":  # (a PRV search up there takes 10 s)
        assert noise_within_budget(state, target, 1e-5, 0.5, 4, max_noise=100.0) > MAX_NOISE
    # a federated site: the ledger's plan declines by the same rule
    ledger = PrivacyLedger(budget=target, state=state)
    with pytest.raises(PrivacyBudgetExceeded, match="too little privacy budget left.*rounds left"):
        ledger.plan_noise(0.5, 2, rounds_left=2)
    # single-site DP training (what seqanom train --dp runs): refuses before any step
    tok = TokenizerConfig(category_buckets=16)
    seqs = build_sequences(small_split[0], tok)
    model = build_model(ModelConfig(kind="lstm", d_model=16, n_layers=1, max_len=32),
                        vocab_sizes(tok, "events"))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=len(seqs),  # one step with every shopper
                      dp=DPConfig(epsilon=target, delta=1e-5, accountant=accountant,
                                  max_noise=2.0))
    with pytest.raises(PrivacyBudgetExceeded, match="too little privacy budget left"):
        train_model(model, seqs, cfg, torch.device("cpu"), accountant_state=state,
                    progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert state.history == _nearly_spent(accountant).history


def test_training_accounts_with_the_configured_accountant(small_split):
    tok = TokenizerConfig(category_buckets=16)
    seqs = build_sequences(small_split[0], tok)

    def train(dp, state=None):
        model = build_model(ModelConfig(kind="lstm", d_model=16, n_layers=1, max_len=32),
                            vocab_sizes(tok, "events"))
        return train_model(model, seqs, TrainConfig(epochs=1, batch_size=32, dp=dp),
                           torch.device("cpu"), accountant_state=state, progress=False)

    r = train(DPConfig(noise_multiplier=1.0, delta=1e-5, accountant="prv"))
    assert r.accountant_state is not None and r.accountant_state.accountant == "prv"
    assert r.epsilon == pytest.approx(r.accountant_state.epsilon())
    assert r.epsilon < AccountantState(history=r.accountant_state.history, delta=1e-5).epsilon()
    with pytest.raises(ConfigError, match="'prv'.*'rdp'"):
        train(DPConfig(noise_multiplier=1.0, delta=1e-5), state=r.accountant_state)
