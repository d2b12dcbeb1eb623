"""The calibration releases' cost: planned as a share of the budget, accounted in the ledger."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from seqanom_core.errors import PrivacyBudgetExceeded
from seqanom_core.federation.calibration_budget import (
    COUNT_WEIGHT,
    calibration_noise,
    calibration_rounds,
    noisy_training_count,
    planned_releases,
    reserved_for_run,
    score_sensitivity,
    stat_sensitivity,
)
from seqanom_core.federation.calibration_histograms import LEVELS
from seqanom_core.federation.releases import (
    RELEASES,
    SITE_METRICS,
    Protection,
    ReleaseKind,
    public_names,
    release,
)
from seqanom_core.federation.run_config import FederationConfig
from seqanom_core.privacy import AccountantState
from seqanom_core.privacy_ledger import PrivacyLedger
from seqanom_core.scoring import stat_names


def test_calibration_rounds_always_end_with_the_last():
    assert calibration_rounds(FederationConfig(num_rounds=5)) == [5]
    assert calibration_rounds(FederationConfig(num_rounds=5, calibration_every=2)) == [2, 4, 5]
    assert calibration_rounds(FederationConfig(num_rounds=4, calibration_every=1)) == [1, 2, 3, 4]
    assert planned_releases(FederationConfig(num_rounds=5)) == 3
    assert planned_releases(FederationConfig(num_rounds=5, calibration_every=1)) == 11


def test_sensitivities_count_one_node_per_level_per_tree():
    # the most statistics any model has: 11 with funnel item states (10 without)
    assert len(stat_names(funnel=True)) == len(stat_names()) + 1 == 11
    assert stat_sensitivity() == pytest.approx(np.sqrt(11 * (LEVELS + 1)))
    assert score_sensitivity() == pytest.approx(np.sqrt(LEVELS + 1))


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_noise_spends_the_share_of_the_budget(share):
    fed = FederationConfig(num_rounds=5, calibration_share=share)
    noise = calibration_noise(fed, 8.0, 1e-5)
    z = noise.noise_multiplier
    planned = noise.planned(fed)
    assert planned == [(noise.count_std, 1.0, 1), (z, 1.0, planned_releases(fed) - 1)]
    alone = AccountantState(history=planned, delta=1e-5).epsilon()
    assert share * 8.0 * 0.95 <= alone <= share * 8.0
    assert noise.stat_std == pytest.approx(z * stat_sensitivity())
    assert noise.score_std == pytest.approx(z * score_sensitivity())
    # the count needs little precision: it gets COUNT_WEIGHT of a histogram's share
    assert noise.count_std == pytest.approx(z / np.sqrt(COUNT_WEIGHT))
    # calibrating every round costs more noise for the same share
    every = calibration_noise(dataclasses.replace(fed, calibration_every=1), 8.0, 1e-5)
    assert every.noise_multiplier > z


def test_without_dp_the_noise_is_the_fixed_one_and_nothing_is_accounted():
    noise = calibration_noise(FederationConfig(calibration_noise=0.7), None, None)
    assert noise.noise_multiplier is None and noise.stat_std == noise.score_std == 0.7


def test_the_noisy_count_is_drawn_once_per_run_and_accounted():
    fed = FederationConfig(num_rounds=3)
    ledger = PrivacyLedger(budget=8.0)
    noise = calibration_noise(fed, 8.0, 1e-5)
    first = noisy_training_count(ledger, "run-a", 200, noise, seed=1, delta=1e-5)
    again = noisy_training_count(ledger, "run-a", 200, noise, seed=2, delta=1e-5)
    assert first == again and first != 200.0 and abs(first - 200) < 6 * noise.count_std
    assert [e["kind"] for e in ledger.entries] == ["training-count"] and ledger.spent() > 0
    other = noisy_training_count(ledger, "run-b", 200, noise, seed=2, delta=1e-5)
    assert other != first and len(ledger.entries) == 2  # a new run draws (and pays) again


def test_the_reserve_shrinks_as_the_run_releases():
    fed = FederationConfig(num_rounds=3)
    ledger = PrivacyLedger(budget=8.0)
    ledger.fix_delta(1e-5)
    noise = calibration_noise(fed, 8.0, 1e-5)
    z = noise.noise_multiplier
    assert reserved_for_run(fed, ledger, "r", noise) == noise.planned(fed)
    noisy_training_count(ledger, "r", 100, noise, seed=0, delta=1e-5)
    assert reserved_for_run(fed, ledger, "r", noise) == [(z, 1.0, 2)]
    ledger.record_gaussian(z, 1, "calibration-statistics", run="r")
    assert reserved_for_run(fed, ledger, "r", noise) == [(z, 1.0, 1)]
    ledger.record_gaussian(z, 1, "calibration-scores", run="r")
    assert reserved_for_run(fed, ledger, "r", noise) == []


def test_dp_sgd_plans_around_the_reserve_and_the_total_stays_in_budget():
    ledger = PrivacyLedger(budget=8.0)
    ledger.fix_delta(1e-5)
    reserve = [(8.0, 1.0, 3)]
    plain = ledger.plan_noise(0.1, 50, 4)
    around = ledger.plan_noise(0.1, 50, 4, reserved=reserve)
    assert around > plain
    after = ledger.check_affordable(around, 0.1, 200, reserve)
    assert after <= 8.0 * (1 + 1e-9)


def test_a_release_over_budget_is_refused_and_records_nothing():
    ledger = PrivacyLedger(budget=1.0)
    ledger.fix_delta(1e-5)
    with pytest.raises(PrivacyBudgetExceeded, match="calibration-scores would bring epsilon"):
        ledger.record_gaussian(0.5, 1, "calibration-scores", run="r")
    assert ledger.entries == [] and ledger.spent() == 0.0


def test_epsilon_by_kind_composes_below_the_sum():
    ledger = PrivacyLedger(budget=20.0)
    ledger.fix_delta(1e-5)
    ledger.record_gaussian(4.0, 1, "training-count", run="r")
    ledger.record_gaussian(4.0, 2, "calibration-statistics", run="r")
    kinds = ledger.by_kind()
    assert set(kinds) == {"training-count", "calibration-statistics"}
    assert kinds["calibration-statistics"] > kinds["training-count"] > 0
    assert max(kinds.values()) < ledger.spent() < sum(kinds.values())


def test_the_release_list_names_a_protection_for_everything():
    names = [r.name for r in RELEASES]
    assert len(names) == len(set(names))
    for r in RELEASES:
        assert r.how
        assert (r.protection is Protection.ACCOUNTED) == (r.kind is not None)
        assert not (r.derived and r.protection is Protection.PUBLIC)
    mechanisms = {r.name for r in RELEASES if r.protection is Protection.ACCOUNTED and not r.derived}
    assert mechanisms == {"arrays", "stat-histograms", "score-histogram", "num-examples"}
    assert {"num-examples", "epsilon", "declined"} <= SITE_METRICS
    assert not {"loss", "accuracy", "auroc", "site-threshold", "train-loss"} & SITE_METRICS
    assert public_names() == {"budget", "site", "error", "declined-policy"}
    assert release("num-examples").kind is ReleaseKind.TRAINING_COUNT
    with pytest.raises(KeyError, match="not in the release inventory"):
        release("loss")
