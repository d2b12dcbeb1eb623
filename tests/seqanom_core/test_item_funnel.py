"""Funnel item states (``TokenizerConfig.item_states = "funnel"``): the tokens, live == batch,
older model directories (basic states) loading and scoring as before, and the run-config key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqanom_core.config import DetectorConfig, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import SequenceDetector, make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.live.events import LiveEvent
from seqanom_core.live.state import ShopperState, append_event
from seqanom_core.schema import BEHAVIOR_CODE, events_from_arrays
from seqanom_core.sequences import (
    ITEM_NEW,
    ITEM_REPEAT,
    ITEM_SAME,
    build_sequences,
    item_state_name,
    sequences_from_tokens,
    vocab_sizes,
)

BASIC, FUNNEL = TokenizerConfig(item_states="basic"), TokenizerConfig(item_states="funnel")
VIEW, CART, FAV, BUY = (BEHAVIOR_CODE[b] for b in ("view", "cart", "fav", "buy"))
# funnel states of an item seen before: (same as the previous event?, furthest stage reached)
SAME_VIEWED, REPEAT_VIEWED, SAME_CARTED, REPEAT_CARTED, SAME_BOUGHT, REPEAT_BOUGHT = range(2, 8)


def _shoppers(rows: dict[str, list[tuple[str, int]]]):
    """Events of shoppers given as (item, behaviour) lists, one second apart."""
    users, items, behaviors, ts = [], [], [], []
    for user, events in rows.items():
        for k, (item, behavior) in enumerate(events):
            users.append(user)
            items.append(item)
            behaviors.append(behavior)
            ts.append(float(k))
    return events_from_arrays(users, items, ["c"] * len(users), behaviors, ts)


def _items(table, tok):
    s = build_sequences(table, tok)
    return {str(u): s.channels["item"][s.span(i)].tolist() for i, u in enumerate(s.ids)}


def test_funnel_states_of_a_forward_and_a_reversed_funnel():
    table = _shoppers({
        "forward": [("x", VIEW), ("x", CART), ("x", BUY), ("y", VIEW), ("x", VIEW)],
        "reversed": [("x", BUY), ("x", CART), ("x", VIEW), ("y", FAV), ("y", VIEW), ("x", CART)],
    })
    funnel = _items(table, FUNNEL)
    assert funnel["forward"] == [ITEM_NEW, SAME_VIEWED, SAME_CARTED, ITEM_NEW, REPEAT_BOUGHT]
    # a cart or a view of an item already bought: the states normal funnels never reach
    assert funnel["reversed"] == [ITEM_NEW, SAME_BOUGHT, SAME_BOUGHT, ITEM_NEW, SAME_CARTED,
                                  REPEAT_BOUGHT]
    # basic states: both shoppers look alike (new, same, same, new, ...)
    basic = _items(table, BASIC)
    assert basic["forward"] == [ITEM_NEW, ITEM_SAME, ITEM_SAME, ITEM_NEW, ITEM_REPEAT]
    assert basic["reversed"] == [ITEM_NEW, ITEM_SAME, ITEM_SAME, ITEM_NEW, ITEM_SAME, ITEM_REPEAT]
    assert vocab_sizes(BASIC, "events")["item"] == 4
    assert vocab_sizes(FUNNEL, "events")["item"] == 8
    assert max(max(v) for v in funnel.values()) < 8
    assert item_state_name(REPEAT_BOUGHT, FUNNEL, "events") == "earlier item, already bought"
    assert item_state_name(ITEM_REPEAT, BASIC, "events") == "earlier item"


def test_pre_tokenised_input_keeps_basic_item_states():
    s = sequences_from_tokens(["0"], [np.array([5, 5, 7, 5])], FUNNEL)
    assert s.channels["item"].tolist() == [ITEM_NEW, ITEM_SAME, ITEM_NEW, ITEM_REPEAT]
    assert vocab_sizes(FUNNEL, "tokens")["item"] == 4


@pytest.mark.parametrize("tok", [BASIC, FUNNEL], ids=["basic", "funnel"])
def test_live_tokens_equal_batch_tokens(tok, small_split):
    _, test, _ = small_split
    batch = build_sequences(test, tok)
    cols = {c: test.column(c).to_pylist() for c in test.column_names}
    for i, uid in enumerate(batch.ids[:60]):
        rows = batch.rows[batch.span(i)]
        st = ShopperState()
        for r in rows:  # the batch path's order: time, ties in row order
            append_event(st, LiveEvent(uid, str(cols["item_id"][r]), str(cols["category_id"][r]),
                                       int(cols["behavior"][r]), float(cols["timestamp"][r])), tok)
        expected = np.stack([batch.channels[c][batch.span(i)] for c in ("event", "gap", "item")])
        assert np.array_equal(st.tokens.astype(np.int64), expected), uid
    assert tok == BASIC or (batch.channels["item"] > 3).any()  # funnel states do occur


def test_a_basic_model_directory_from_before_the_setting_loads_and_scores_as_before(
        small_split, tmp_path):
    train, test, _ = small_split
    det = make_detector("lstm", model_config=ModelConfig(kind="lstm", d_model=16, n_layers=1,
                                                          max_len=16),
                        tokenizer_config=BASIC, train_config=TrainConfig(epochs=1, seed=0),
                        progress=False).fit(train)
    before = det.score_shoppers(test).scores
    det.save(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["tokenizer"].pop("item_states") == "basic"  # as directories written before it
    cfg_path.write_text(json.dumps(cfg))
    loaded = SequenceDetector.load(tmp_path / "m", progress=False)
    assert loaded.tokenizer_config.item_states == "basic"
    assert np.array_equal(loaded.score_shoppers(test).scores, before)
    assert DetectorConfig.from_dict({"tokenizer": {}}).tokenizer.item_states == "basic"


def test_the_run_config_key_is_parsed_and_validated():
    assert settings_from_run_config({"item-states": "funnel"}).tokenizer.item_states == "funnel"
    assert settings_from_run_config({"item-states": "basic"}).tokenizer.item_states == "basic"
    with pytest.raises(ConfigError, match="item_states must be one of basic, funnel") as err:
        settings_from_run_config({"item-states": "funel"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="item_states"):
        TokenizerConfig(item_states="stages")
