"""Pretraining and fine-tuning: what transfers (seqanom_core.pretraining), the fine-tuning modes
(seqanom_core.models.finetune) and a detector that starts from a pretrained one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import SequenceDetector, make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.models import build_model
from seqanom_core.models.finetune import (
    LowRankAdapter,
    apply_finetune,
    merge_adapters,
    trainable_names,
)
from seqanom_core.pretraining import (
    EVENT_ROW_ARRAYS,
    concat_sequences,
    pool_category_rows,
    transfer_weights,
)
from seqanom_core.sequences import N_SPECIAL, build_sequences, vocab_sizes

TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=32)
VOCAB = vocab_sizes(TokenizerConfig(), "events")


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {c: torch.randint(N_SPECIAL, VOCAB[c], (4, 12), generator=g)
              for c in ("event", "gap", "item")}
    return inputs, torch.randint(N_SPECIAL, VOCAB["event"], (4, 12), generator=g)


def _out(model, batch):
    model.eval()
    with torch.no_grad():
        return model(*batch)["event"]


def test_adapters_start_as_the_pretrained_model_and_merge_back_to_the_plain_architecture():
    torch.manual_seed(0)
    model = build_model(TINY, VOCAB)
    batch = _batch()
    before = _out(model, batch)
    total = sum(p.numel() for p in model.parameters())
    n = apply_finetune(model, "adapters", rank=4)
    assert 0 < n < total
    assert any(isinstance(m, LowRankAdapter) for m in model.modules())
    torch.testing.assert_close(_out(model, batch), before)  # up starts at zero
    # every trainable parameter is an adapter, a head or the event-token embedding
    names = trainable_names(model)
    assert names and all(".down." in k or ".up." in k or k.split(".")[0] in (
        "head_event", "cond", "cond_fc", "head_gap", "head_item", "copy") or
        k.startswith("emb.event.") for k in names)
    assert not any(k.startswith("emb.gap") or ".base." in k for k in names)
    model.train()
    assert ModuleValidator.validate(model, strict=True) == []  # Opacus can train it
    with torch.no_grad():  # an adapter that has learned something
        for m in model.modules():
            if isinstance(m, LowRankAdapter):
                m.up.weight.normal_(0, 0.1)
    adapted = _out(model, batch)
    assert not torch.allclose(adapted, before)
    merge_adapters(model)
    torch.testing.assert_close(_out(model, batch), adapted, rtol=1e-4, atol=1e-4)
    assert set(model.state_dict()) == set(build_model(TINY, VOCAB).state_dict())
    assert all(p.requires_grad for p in model.parameters())


def test_head_mode_trains_heads_and_event_embedding_only():
    model = build_model(TINY, VOCAB)
    apply_finetune(model, "head")
    names = trainable_names(model)
    assert "head_event.weight" in names and "emb.event.weight" in names
    assert not any(k.startswith(("blocks.", "pos.", "emb.gap", "emb.item", "ln_f"))
                   for k in names)


def test_adapters_need_plain_linear_layers_and_modes_are_checked():
    lstm = build_model(ModelConfig(kind="lstm", d_model=16, n_layers=1, max_len=32), VOCAB)
    with pytest.raises(ConfigError, match="no plain linear layers"):
        apply_finetune(lstm, "adapters")
    assert apply_finetune(lstm, "head") > 0  # the head mode works on every backbone
    with pytest.raises(ConfigError, match="finetune must be one of"):
        apply_finetune(build_model(TINY, VOCAB), "lora")
    with pytest.raises(ConfigError, match="finetune must be one of"):
        TrainConfig(finetune="lora")
    with pytest.raises(ConfigError, match="adapter_rank"):
        TrainConfig(adapter_rank=0)


def test_category_rows_are_pooled_per_behaviour_and_the_rest_is_copied(small_split):
    train, _, _ = small_split
    pre = make_detector("transformer", model_config=TINY,
                        train_config=TrainConfig(epochs=1), progress=False).fit(train)
    model = build_model(TINY, VOCAB)
    transfer_weights(model, pre, TokenizerConfig())
    src, dst = pre.network_.state_dict(), model.state_dict()
    groups, cats = VOCAB["event_groups"], (VOCAB["event"] - N_SPECIAL) // VOCAB["event_groups"]
    for name in EVENT_ROW_ARRAYS:
        rows = dst[name][N_SPECIAL:].reshape(groups, cats, -1)
        want = src[name][N_SPECIAL:].reshape(groups, cats, -1).mean(1, keepdim=True)
        torch.testing.assert_close(rows, want.expand_as(rows))
        torch.testing.assert_close(dst[name][:N_SPECIAL], src[name][:N_SPECIAL])  # specials kept
    for name in set(dst) - set(EVENT_ROW_ARRAYS):
        torch.testing.assert_close(dst[name], src[name])
    kept = build_model(TINY, VOCAB)
    transfer_weights(kept, pre, TokenizerConfig(), pool_categories=False)
    torch.testing.assert_close(kept.state_dict()["emb.event.weight"], src["emb.event.weight"])
    with pytest.raises(ConfigError, match="model settings differ: d_model 32"):
        transfer_weights(build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=32),
                                     VOCAB), pre, TokenizerConfig())
    with pytest.raises(ConfigError, match="tokenizer settings differ: item_states"):
        transfer_weights(model, pre, TokenizerConfig(item_states="funnel"))
    pooled = copy.deepcopy(model)
    pool_category_rows(pooled)  # pooling twice changes nothing
    torch.testing.assert_close(pooled.state_dict()["cond.weight"], dst["cond.weight"])


def test_a_detector_fine_tunes_adapters_under_dp_from_a_pretrained_one(small_split, tmp_path):
    train, test, _ = small_split
    with pytest.raises(ConfigError, match="give one to start from"):
        make_detector("transformer", model_config=TINY, progress=False,
                      train_config=TrainConfig(finetune="adapters")).fit(train)
    pre = make_detector("transformer", model_config=TINY,
                        train_config=TrainConfig(epochs=1), progress=False).fit(train)
    frozen = pre.network_.state_dict()["blocks.0.fc1.weight"].clone()
    det = make_detector("transformer", model_config=TINY, progress=False, train_config=TrainConfig(
        epochs=1, finetune="adapters", adapter_rank=4,
        dp=DPConfig(epsilon=8.0, seed=0))).fit(train, init=pre)
    info = det.metadata_["pretrained"]
    assert info["finetune"] == "adapters" and info["categories"] == "pooled per behaviour"
    assert 0 < info["trainable_parameters"] < sum(p.numel() for p in det.network_.parameters())
    assert det.train_result_.epsilon <= 8.0
    # the merged layer differs from the pretrained one by a rank-4 update
    delta = det.network_.state_dict()["blocks.0.fc1.weight"] - frozen
    assert 0 < torch.linalg.matrix_rank(delta).item() <= 4
    det.save(tmp_path / "m")
    back = SequenceDetector.load(tmp_path / "m", progress=False)
    np.testing.assert_allclose(back.decision_function(test), det.decision_function(test),
                               rtol=1e-5, atol=1e-5)


def test_pooled_sequences_keep_shoppers_of_different_files_apart(small_split):
    train, test, _ = small_split
    a, b = build_sequences(train, TokenizerConfig()), build_sequences(test, TokenizerConfig())
    both = concat_sequences([a, a], ["0:", "1:"])
    assert len(both) == 2 * len(a) and len(set(both.ids.tolist())) == 2 * len(a)
    assert both.n_events == 2 * a.n_events
    np.testing.assert_array_equal(both.subset(np.arange(len(a), 2 * len(a))).channels["event"],
                                  a.channels["event"])
    assert len(concat_sequences([a, b])) == len(a) + len(b)
    with pytest.raises(ConfigError, match="prefixes"):
        concat_sequences([a, b], ["x"])
