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
