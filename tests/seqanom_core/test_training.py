from __future__ import annotations

import math

import pytest

from seqanom_core.config import TrainConfig
from seqanom_core.errors import ConfigError
from seqanom_core.training import lr_factor


def test_cosine_schedule_warms_up_then_decays_to_a_tenth():
    total = 100
    f = [lr_factor(s, total, "cosine") for s in range(total)]
    assert f[0] == pytest.approx(0.2)  # 5 warm-up steps: 1/5 of the peak first
    assert f[4] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:-1], f[5:], strict=True))  # monotone decay after warm-up
    assert f[-1] == pytest.approx(0.1, abs=1e-3)
    assert math.isclose(lr_factor(7, 1, "cosine"), 1.0)


def test_constant_schedule_and_unknown_schedule():
    assert {lr_factor(s, 50, "constant") for s in range(50)} == {1.0}
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_unknown_optimizer_is_a_config_error():
    assert TrainConfig(optimizer="sgd").optimizer == "sgd"
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="adam")


def test_plain_sgd_at_a_dp_sized_learning_rate_trains_without_dp(small_split):
    # without DP nothing clips per shopper: the batch gradient is capped instead, so lr 1.0
    # (the federated sites' default) still descends
    import numpy as np

    from seqanom_core.config import ModelConfig
    from seqanom_core.detector import make_detector

    train, test, _ = small_split
    det = make_detector("transformer", model_config=ModelConfig(d_model=16, n_layers=1, n_heads=2),
                        train_config=TrainConfig(epochs=3, optimizer="sgd", lr=1.0),
                        progress=False).fit(train)
    losses = det.train_result_.epoch_losses
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert np.isfinite(det.decision_function(test)).all()


@pytest.mark.parametrize("public_size", [None, 64])
def test_dp_schedule_follows_the_public_size_not_the_exact_count(small_split, public_size):
    """A site passes its released (noisy) count: the sample rate, the steps and Opacus' expected
    batch size then come from it, so nothing derived from them depends on the exact count."""
    import numpy as np
    import torch

    from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig
    from seqanom_core.models import build_model
    from seqanom_core.sequences import build_sequences, vocab_sizes
    from seqanom_core.training import train_model

    tok = TokenizerConfig()
    seqs = build_sequences(small_split[0], tok)
    seqs = seqs.subset(np.arange(40))
    model = build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=16),
                        vocab_sizes(tok, "events"))
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.5,
                      dp=DPConfig(noise_multiplier=1.0, delta=1e-5, seed=3))
    result = train_model(model, seqs, cfg, torch.device("cpu"), progress=False,
                         public_size=public_size)
    batches = 5 if public_size is None else 8  # ceil(40 / 8), ceil(64 / 8)
    [(sigma, q, steps)] = result.accountant_state.history
    assert sigma == 1.0 and q == pytest.approx(1 / batches) and steps == 2 * batches
