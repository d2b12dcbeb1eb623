from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from seqanom_core.config import ModelConfig, TokenizerConfig
from seqanom_core.errors import ConfigError
from seqanom_core.models import backbone_kinds, build_model
from seqanom_core.models.mingru import linear_scan, min_gru
from seqanom_core.sequences import CHANNELS, N_SPECIAL, vocab_sizes

VOCAB = vocab_sizes(TokenizerConfig(), "events")


@pytest.mark.parametrize("kind", backbone_kinds())
def test_model_is_opacus_compatible(kind):
    model = build_model(ModelConfig(kind=kind, d_model=32, n_heads=2, n_layers=1), VOCAB)
    ModuleValidator.validate(model, strict=True)  # raises if any layer is unsupported


@pytest.mark.parametrize("kind", backbone_kinds())
def test_forward_shapes_and_causality(kind):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, d_model=32, n_heads=2, n_layers=1, dropout=0), VOCAB).eval()
    x = {c: torch.randint(1, VOCAB[c], (2, 10)) for c in CHANNELS}
    nxt = torch.randint(3, VOCAB["event"], (2, 10))
    out = model(x, nxt)
    assert out["event"].shape == (2, 10, VOCAB["event"])
    assert out["gap"].shape == (2, 10, VOCAB["gap"]) and out["item"].shape == (2, 10, VOCAB["item"])
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


def _copy_only(vocab, features):
    """A model whose event logits are only the history copy, with the given fixed weights."""
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, dropout=0), vocab).eval()
    with torch.no_grad():
        model.head_event.weight.zero_()
        model.head_event.bias.zero_()
        model.copy.weight.zero_()
        model.copy.bias.copy_(torch.tensor(features).repeat_interleave(model.copy_groups))
    return model


def test_history_copy_favours_the_shoppers_own_tokens_and_categories():
    c = TokenizerConfig().category_buckets
    view, buy = (lambda k: N_SPECIAL + k), (lambda k: N_SPECIAL + 3 * c + k)
    events = torch.tensor([[1, view(5), view(9), view(5)]])  # BOS, then views of buckets 5, 9, 5
    x = {"event": events, "gap": torch.ones_like(events), "item": torch.ones_like(events)}
    nxt = torch.full_like(events, view(1))
    # weight only "how often this token occurred": after the history, view(5) (twice) beats
    # view(9) (once) beats anything unseen; specials and END get no copy term
    logits = _copy_only(VOCAB, [0.0, 1.0, 0.0, 0.0])(x, nxt)["event"][0, -1].detach()
    assert logits[view(5)] > logits[view(9)] > logits[view(7)] == 0.0
    assert logits[:N_SPECIAL].abs().max() == 0
    # weight only "this category occurred": a buy in bucket 5 beats a buy in an unseen bucket
    logits = _copy_only(VOCAB, [0.0, 0.0, 0.0, 1.0])(x, nxt)["event"][0, -1].detach()
    assert logits[buy(5)] > logits[buy(9)] > logits[buy(7)] == 0.0
    # "same category as the current event" and "is the current event" look at position t only
    logits = _copy_only(VOCAB, [1.0, 0.0, 2.0, 0.0])(x, nxt)["event"][0, -1].detach()
    assert logits[view(5)] == pytest.approx(3.0) and logits[buy(5)] == pytest.approx(2.0)
    assert logits[view(9)] == 0.0


def test_history_copy_on_pre_tokenised_vocabulary_and_without_copy():
    vocab = vocab_sizes(TokenizerConfig(token_buckets=50), "tokens")
    assert vocab["event_groups"] == 1
    events = torch.tensor([[1, N_SPECIAL + 4, N_SPECIAL + 4]])
    x = {"event": events, "gap": torch.ones_like(events), "item": torch.ones_like(events)}
    logits = _copy_only(vocab, [0.0, 1.0, 0.0, 0.0])(x, events)["event"][0, -1].detach()
    assert logits.argmax() == N_SPECIAL + 4
    plain = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, history_copy=False), VOCAB)
    assert not any(k.startswith("copy") for k in plain.state_dict())
    assert {k for k in _copy_only(VOCAB, [0.0] * 4).state_dict() if k.startswith("copy")} == {
        "copy.weight", "copy.bias"}
    with pytest.raises(ConfigError, match="groups"):
        build_model(ModelConfig(), {**VOCAB, "event": VOCAB["event"] + 1})
    with pytest.raises(ConfigError, match="history_copy"):
        ModelConfig(history_copy="yes")


def test_linear_scan_matches_the_recurrence_and_its_gradient():
    torch.manual_seed(0)
    a = torch.rand(3, 9, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, 9, 4, dtype=torch.double, requires_grad=True)
    h, expected = torch.zeros(3, 4, dtype=torch.double), []
    for t in range(9):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    assert torch.allclose(linear_scan(a, b), torch.stack(expected, 1))
    assert torch.autograd.gradcheck(linear_scan, (a, b))
    z = torch.sigmoid(torch.randn(2, 5, 3))
    c = torch.randn(2, 5, 3)
    h = min_gru(torch.logit(z), c)
    assert torch.allclose(h[:, 0], z[:, 0] * c[:, 0], atol=1e-6)  # h_0 = 0
    assert torch.allclose(h[:, 3], (1 - z[:, 3]) * h[:, 2] + z[:, 3] * c[:, 3], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("kind", backbone_kinds())
def test_per_sample_gradients_are_each_samples_own(kind):
    # what DP-SGD clips: Opacus' grad samplers must give each shopper's own gradient (for the
    # minGRU, its parameter-free recurrence between nn.Linear layers needs no sampler of its own)
    from opacus import GradSampleModule

    torch.manual_seed(0)
    config = ModelConfig(kind=kind, d_model=8, n_heads=2, n_layers=2, dropout=0)
    model = build_model(config, VOCAB)
    x = {c: torch.randint(1, VOCAB[c], (3, 6)) for c in CHANNELS}
    nxt = torch.randint(3, VOCAB["event"], (3, 6))

    def loss(m, rows):
        out = m({c: v[rows] for c, v in x.items()}, nxt[rows])
        return sum(o.pow(2).mean((1, 2)).sum() for o in out.values())

    gsm = GradSampleModule(model, loss_reduction="sum")
    loss(gsm, slice(None)).backward()
    samples = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm._close()
    for i in range(3):
        model.zero_grad()
        loss(model, slice(i, i + 1)).backward()
        for n, p in model.named_parameters():
            assert torch.allclose(samples[n][i], p.grad, atol=1e-5), (n, (samples[n][i] - p.grad).abs().max())
