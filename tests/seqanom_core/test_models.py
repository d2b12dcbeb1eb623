from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from seqanom_core.config import ModelConfig, TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.models import build_model
from seqanom_core.sequences import vocab_sizes

VOCAB = vocab_sizes(TokenizerConfig(), "events")


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_model_is_opacus_compatible(kind):
    model = build_model(ModelConfig(kind=kind, d_model=32, n_heads=2, n_layers=1), VOCAB)
    ModuleValidator.validate(model, strict=True)  # raises if any layer is unsupported


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_forward_shapes_and_causality(kind):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, d_model=32, n_heads=2, n_layers=1, dropout=0), VOCAB).eval()
    x = {c: torch.randint(1, VOCAB[c], (2, 10)) for c in VOCAB}
    nxt = torch.randint(3, VOCAB["event"], (2, 10))
    out = model(x, nxt)
    assert out["event"].shape == (2, 10, VOCAB["event"])
    assert out["gap"].shape == (2, 10, VOCAB["gap"]) and out["item"].shape == (2, 10, 4)
    x2 = {c: v.clone() for c, v in x.items()}
    x2["event"][:, 7:] = 3  # change the future
    out2 = model(x2, nxt)
    assert torch.allclose(out["event"][:, :7], out2["event"][:, :7], atol=1e-5)
    assert not torch.allclose(out["event"][:, 7:], out2["event"][:, 7:])


def test_config_validation():
    with pytest.raises(ConfigError):
        ModelConfig(kind="gru")
    with pytest.raises(ConfigError):
        ModelConfig(d_model=30, n_heads=4)
