"""One contract for every detector: it learns, scores vary, save/load round-trips, misuse is clear."""

from __future__ import annotations

import json

import numpy as np
import pytest

import seqanom_core
from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import LSTMDetector, SequenceDetector, TransformerDetector, make_detector
from seqanom_core.errors import ConfigError, ModelFileError, NotFittedError
from seqanom_core.metrics import auroc
from seqanom_core.models import backbone_kinds

KINDS = list(backbone_kinds())  # every registered backbone goes through the same contract


@pytest.fixture(scope="module", params=KINDS)
def fitted(request, small_split):
    train, test, labels = small_split
    det = make_detector(
        request.param,
        model_config=ModelConfig(kind=request.param, d_model=32, n_heads=2, n_layers=1, max_len=64),
        tokenizer_config=TokenizerConfig(category_buckets=32),
        train_config=TrainConfig(epochs=4, batch_size=32, seed=0),
        progress=False,
    ).fit(train)
    return det, test, labels


def _labels_for(ids, labels):
    lab = labels.set_index("user_id").loc[ids]
    return lab.is_anomalous.to_numpy(), lab.kind.tolist()


def test_learns_to_separate_injected_anomalies(fitted):
    det, test, labels = fitted
    scored = det.score_shoppers(test)
    y, _ = _labels_for(scored.ids, labels)
    assert len(scored.scores) == len(labels)
    assert np.std(scored.scores) > 0
    assert auroc(y, scored.scores) > 0.8


def test_threshold_and_predict(fitted):
    det, test, labels = fitted
    pred = det.predict(test)
    assert set(np.unique(pred)) <= {0, 1}
    scores = det.decision_function(test)
    assert np.array_equal(pred, (scores > det.threshold_).astype(int))
    y, _ = _labels_for(det.score_shoppers(test).ids, labels)
    # flags concentrate on anomalies; normal shoppers are flagged near the target rate
    assert pred[y == 1].mean() > 2 * max(pred[y == 0].mean(), 0.05)


def test_explain_names_events_and_expected(fitted):
    det, test, _ = fitted
    scored = det.score_shoppers(test)
    top = int(np.argmax(scored.scores))
    ex = det.explain(scored, top, test, top_k=3)
    assert ex["driver"] == scored.driver[top]
    assert 1 <= len(ex["events"]) <= 3
    for e in ex["events"]:
        assert e["expected"] and e["observed"]
        assert 0 <= e["observed_prob"] <= 1 and e["surprise"] >= 0


def test_save_load_round_trip(fitted, tmp_path):
    det, test, _ = fitted
    out = det.save(tmp_path / "model")
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["privacy"] == {"dp": False}
    assert meta["written_by"] == f"seqanom {seqanom_core.__version__}"
    loaded = SequenceDetector.load(out, device="cpu", progress=False)
    assert type(loaded) is type(det)
    assert loaded.threshold_ == pytest.approx(det.threshold_)
    np.testing.assert_allclose(loaded.decision_function(test), det.decision_function(test), rtol=1e-5)


def test_model_directory_from_before_the_history_copy_loads(small_split, tmp_path):
    """A directory written before ``history_copy`` existed (no such model key, no
    ``event_groups`` in the vocabulary) loads as the copy-less model it was."""
    train, test, _ = small_split
    det = make_detector("transformer", model_config=ModelConfig(d_model=16, n_heads=2, n_layers=1,
                                                         max_len=32, history_copy=False),
                        train_config=TrainConfig(epochs=1, seed=0), progress=False).fit(train)
    out = det.save(tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["model"]["history_copy"], cfg["vocab"]["event_groups"]
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = SequenceDetector.load(out, device="cpu", progress=False)
    assert loaded.model_config.history_copy is False
    np.testing.assert_allclose(loaded.decision_function(test), det.decision_function(test), rtol=1e-5)


def test_unfitted_and_bad_dirs(tmp_path):
    with pytest.raises(NotFittedError):
        TransformerDetector().decision_function(None)
    with pytest.raises(ModelFileError):
        SequenceDetector.load(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="missing"):
        SequenceDetector.load(tmp_path / "m")
    with pytest.raises(ConfigError):
        make_detector("gru")
    with pytest.raises(ConfigError):
        LSTMDetector(model_config=ModelConfig(kind="transformer")).fit(_tiny_table())


def _tiny_table():
    from seqanom_core.schema import events_from_arrays

    n = 40
    return events_from_arrays([str(i % 20) for i in range(n)], ["i"] * n, ["c"] * n, [0] * n,
                              np.arange(n, dtype=float))


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_detector(kind, small_split):
    train, test, _ = small_split

    def fit(seed):
        return make_detector(
            kind, model_config=ModelConfig(kind=kind, d_model=16, n_heads=2, n_layers=1, max_len=32),
            tokenizer_config=TokenizerConfig(category_buckets=8),
            train_config=TrainConfig(epochs=1, batch_size=32, seed=seed), progress=False,
        ).fit(train).decision_function(test)

    first = fit(0)
    assert np.array_equal(first, fit(0))  # initial weights, batches and dropout all seeded
    assert not np.array_equal(first, fit(1))


def test_fit_warns_when_few_held_out_shoppers_lie_above_the_threshold(small_split, caplog):
    train, _, _ = small_split
    cfg = dict(model_config=ModelConfig(d_model=16, n_heads=2, n_layers=1, max_len=32), progress=False)
    # about 280 training shoppers: 56 held out, 2.8 of them above a 5% threshold
    det = make_detector("transformer", train_config=TrainConfig(epochs=1, seed=0), **cfg).fit(train)
    assert det.metadata_["calibration_tail_shoppers"] == pytest.approx(
        det.metadata_["n_calibration_shoppers"] * 0.05)
    assert "may be far from the target" in caplog.text
    caplog.clear()
    make_detector("transformer", train_config=TrainConfig(epochs=1, seed=0, alert_rate=0.2),
                  **cfg).fit(train)
    assert "may be far from the target" not in caplog.text
