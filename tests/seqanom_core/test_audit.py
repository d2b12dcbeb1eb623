"""The privacy audit's parts: canaries, membership, AUC, the one-run ε lower bound."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
import pytest
from scipy.stats import binom

from seqanom_core.audit import (
    concat_sequences,
    draw_membership,
    epsilon_lower_bound,
    make_canaries,
    membership_auc,
    one_run_epsilon,
    one_run_p_value,
)
from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.sequences import build_sequences


@pytest.fixture(scope="module")
def events(small_split):
    return small_split[0]


def test_all_correct_guesses_give_the_binomial_bound():
    # r of r right at delta 0: the bound solves p^r = 0.05 with p = e^eps / (1 + e^eps)
    p = 0.05 ** (1 / 200)
    assert one_run_epsilon(200, 200, 200, 0.0) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    assert one_run_epsilon(200, 200, 200, 0.0) > 4.0


def test_p_value_is_the_binomial_tail_plus_the_delta_term():
    assert one_run_p_value(100, 40, 30, 0.0, 0.0) == pytest.approx(binom.sf(29, 40, 0.5))
    p_pure = one_run_p_value(1000, 100, 70, 1.0, 0.0)
    assert p_pure == pytest.approx(binom.sf(69, 100, 1 / (1 + math.exp(-1))))
    assert one_run_p_value(1000, 100, 70, 1.0, 1e-4) > p_pure  # delta only loosens the test
    assert one_run_p_value(1000, 100, 70, 2.0, 0.0) > p_pure  # larger eps: more plausible
    # delta makes the bound smaller, never larger
    assert one_run_epsilon(1000, 100, 90, 1e-3) < one_run_epsilon(1000, 100, 90, 0.0)
    with pytest.raises(ConfigError):
        one_run_p_value(10, 5, 6, 1.0, 0.0)


def test_perfect_scores_bound_clearly_positive_and_random_ones_near_zero():
    rng = np.random.default_rng(0)
    truth = draw_membership(512, seed=1)
    perfect = epsilon_lower_bound(truth, truth.astype(float) + 0.01 * rng.random(512))
    assert perfect["epsilon"] > 3.0 and perfect["correct"] == perfect["guesses"]
    # random scores: the 95% test (with its union bound over k) rarely rejects anything
    bounds = [epsilon_lower_bound(truth, np.random.default_rng(s).random(512))["epsilon"]
              for s in range(20)]
    assert sum(b > 0 for b in bounds) <= 2 and max(bounds) < 0.5
    # a score that is the truth for a quarter of the canaries and random for the rest: between
    mixed = np.where(np.arange(512) < 128, truth * 10.0 - 5.0, rng.random(512))
    assert 0 < epsilon_lower_bound(truth, mixed)["epsilon"] < perfect["epsilon"]


def test_membership_auc():
    truth = np.array([1, 1, 0, 0], dtype=bool)
    assert membership_auc(truth, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0
    assert membership_auc(truth, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert membership_auc(truth, np.ones(4)) == 0.5


def test_membership_is_seeded_and_about_half():
    a = draw_membership(4000, seed=3)
    assert np.array_equal(a, draw_membership(4000, seed=3))
    assert not np.array_equal(a, draw_membership(4000, seed=4))
    assert 0.46 < a.mean() < 0.54


def test_canaries_are_deterministic_distinct_and_fresh(events):
    c = make_canaries(events, 40, 12, seed=5)
    assert c.equals(make_canaries(events, 40, 12, seed=5))
    assert not c.equals(make_canaries(events, 40, 12, seed=6))
    # canary i depends on the seed and i only: more canaries leave the first ones as they were
    more = make_canaries(events, 60, 12, seed=5)
    assert more.slice(0, c.num_rows).equals(c)
    ids = c.column("user_id").to_numpy(zero_copy_only=False)
    assert len(set(ids)) == 40 and np.all(np.unique(ids, return_counts=True)[1] == 12)
    real = set(pc.unique(events.column("user_id")).to_pylist())
    assert not real & set(ids)
    items = c.column("item_id").to_numpy(zero_copy_only=False).reshape(40, 12)
    assert len({tuple(r) for r in items}) == 40  # no two canaries alike
    assert set(items.ravel()) <= set(events.column("item_id").to_pylist())
    assert set(c.column("behavior").to_pylist()) <= set(events.column("behavior").to_pylist())
    seqs = build_sequences(c, TokenizerConfig())
    assert len(seqs) == 40 and set(seqs.lengths.tolist()) == {12}


def test_canary_ids_avoid_real_ids_that_look_like_canaries(events):
    first = make_canaries(events, 3, 4, seed=0)
    again = make_canaries(first, 3, 4, seed=0)  # the "real" shoppers are canary-00000..
    assert not set(again.column("user_id").to_pylist()) & set(first.column("user_id").to_pylist())


def test_concat_sequences_round_trips(events):
    seqs = build_sequences(events, TokenizerConfig())
    half = len(seqs) // 2
    joined = concat_sequences([seqs.subset(np.arange(half)),
                               seqs.subset(np.arange(half, len(seqs)))])
    assert np.array_equal(joined.ids, seqs.ids)
    assert np.array_equal(joined.offsets, seqs.offsets)
    for c in seqs.channels:
        assert np.array_equal(joined.channels[c], seqs.channels[c])


def test_fit_with_given_calibration_trains_on_all_of_the_data(events):
    seqs = build_sequences(events, TokenizerConfig())
    train, calib = seqs.subset(np.arange(60)), seqs.subset(np.arange(60, 90))
    det = make_detector("transformer", model_config=ModelConfig(d_model=16, n_heads=2,
                                                                n_layers=1, max_len=32),
                        train_config=TrainConfig(epochs=1), progress=False)
    det.fit(train, calibration=calib)
    assert det.metadata_["n_train_shoppers"] == 60
    assert det.metadata_["n_calibration_shoppers"] == 30
