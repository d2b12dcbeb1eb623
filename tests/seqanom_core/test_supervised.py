"""Semi-supervised mode: the supervised head (seqanom_core.supervised) and train --labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqanom_core.config import DPConfig, ModelConfig, TrainConfig
from seqanom_core.detector import SequenceDetector, make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.labels import align_labels
from seqanom_core.metrics import auroc
from seqanom_core.scoring import ScoreCalibrator, stat_names
from seqanom_core.sequences import build_sequences
from seqanom_core.supervised import (
    HEAD,
    LabelledSplit,
    SupervisedHead,
    features,
    fit_head,
    labelled_split,
    partition,
)
from simulation.cli.main import main

N_STATS = len(stat_names())


def _identity_calibrator() -> ScoreCalibrator:
    return ScoreCalibrator(np.zeros(N_STATS), np.ones(N_STATS), top_k=3)


def test_head_learns_a_separable_toy_case_the_score_misses():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, N_STATS))
    y = (np.arange(200) < 40).astype(int)
    z[y == 1, 4] += 3.0  # the anomalies stand out on one statistic only
    score = rng.normal(size=200)  # the unsupervised score knows nothing of it
    x = features(score, z)
    head = SupervisedHead().fit(x, y)
    assert auroc(y, score) < 0.7
    assert auroc(y, head.decision(x)) > 0.95
    assert head.weights[1 + 4] == np.abs(head.weights[1:]).max()
    back = SupervisedHead.from_dict(json.loads(json.dumps(head.to_dict())))
    np.testing.assert_array_equal(back.decision(x), head.decision(x))


def test_without_signal_the_head_ranks_as_the_unsupervised_score():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(100, N_STATS))
    score = z[:, :3].mean(axis=1) + np.where(np.arange(100) < 20, 2.0, 0.0)
    y = (np.arange(100) < 20).astype(int)
    head = SupervisedHead().fit(features(score, z), y)
    assert head.weights[0] > 0
    new = rng.normal(size=(50, N_STATS))
    s_new = new[:, :3].mean(axis=1)
    corr = np.corrcoef(np.argsort(np.argsort(s_new)),
                       np.argsort(np.argsort(head.decision(features(s_new, new)))))[0, 1]
    assert corr > 0.9


def test_unlabelled_shoppers_are_never_negatives():
    """Calibration holds 20 labelled normal shoppers and 30 unlabelled ones that look like the
    labelled anomalies: taken as negatives they would change the head (a negative weight on
    the statistic they stand out on); the head must not depend on them at all."""
    rng = np.random.default_rng(2)
    calib = rng.normal(scale=0.3, size=(50, N_STATS))
    calib[20:, 7] += 4.0  # unlabelled (positions 20..49)
    positives = rng.normal(scale=0.3, size=(10, N_STATS))
    positives[:, 4] += 4.0
    calib_idx = np.arange(100, 150)  # indices of the calibration shoppers in the training set
    split = LabelledSplit(anomalous=np.arange(10), normal=np.arange(100, 120))
    head = fit_head(_identity_calibrator(), calib, calib_idx, positives, split)
    assert head.info["n_labelled_normal"] == 20 and head.info["n_labelled_anomalous"] == 10
    assert head.weights[1 + 4] > 0 and abs(head.weights[1 + 7]) < 0.05
    other = calib.copy()
    other[20:] = rng.normal(loc=-3.0, size=(30, N_STATS))  # other unlabelled shoppers
    again = fit_head(_identity_calibrator(), other, calib_idx, positives, split)
    np.testing.assert_array_equal(again.weights, head.weights)


def test_partition_keeps_labelled_anomalies_out_and_labelled_normals_in_calibration():
    split = LabelledSplit(anomalous=np.array([0, 1, 2]), normal=np.array([3, 4, 5, 6]))
    train, calib = partition(100, split, 0.2, seed=0)
    assert not set(split.anomalous) & (set(train) | set(calib))
    assert set(split.normal) <= set(calib)
    assert len(calib) == round(0.2 * 97) and len(train) + len(calib) == 97


def test_labels_of_unknown_shoppers_or_one_class_are_refused():
    ids = np.array(["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"^lab.csv: 1 of 2 labelled user_ids are not shoppers"):
        labelled_split(ids, pd.DataFrame({"user_id": ["a", "zz"], "is_anomalous": [1, 0]}),
                       "lab.csv")
    with pytest.raises(ConfigError, match="no shopper of the training data is labelled normal"):
        labelled_split(ids, pd.DataFrame({"user_id": ["a"], "is_anomalous": [1]}), "lab.csv")


@pytest.fixture(scope="module")
def labelled_data(small_split):
    """Training shoppers with injected anomalies; labels for some of them; test shoppers."""
    from simulation.inject import inject_anomalies

    train_ev, test_ev, test_labels = small_split
    train_ev, train_labels = inject_anomalies(train_ev, rate=0.3, seed=5,
                                              kinds=["crawler", "bot_replay"])
    pos = train_labels[train_labels.is_anomalous == 1].iloc[:20]
    neg = train_labels[train_labels.is_anomalous == 0].iloc[:20]
    return train_ev, pd.concat([pos, neg]), test_ev, test_labels


def _fit(train, **kw):
    return make_detector("lstm", model_config=ModelConfig(kind="lstm", d_model=16, n_layers=1,
                                                          max_len=32),
                         train_config=TrainConfig(epochs=1, batch_size=32, seed=0,
                                                  alert_rate=0.1),
                         progress=False).fit(train, **kw)


@pytest.fixture(scope="module")
def fitted(labelled_data):
    train_ev, labels, _, _ = labelled_data
    return _fit(train_ev, labels=labels)


def test_train_with_labels_writes_a_head_that_score_uses(fitted, labelled_data, tmp_path):
    _, labels, test_ev, test_labels = labelled_data
    assert fitted.head_ is not None
    assert fitted.metadata_["supervised_head"]["n_labelled_anomalous"] == 20
    assert fitted.metadata_["supervised_head"]["n_labelled_normal"] == 20
    fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / HEAD).is_file()
    loaded = SequenceDetector.load(tmp_path / "m", progress=False)
    scored = loaded.score_shoppers(test_ev)
    np.testing.assert_allclose(scored.scores, fitted.decision_function(test_ev))
    unsupervised, _ = loaded.calibrator_.score(scored.stats)
    assert not np.allclose(scored.scores, unsupervised)  # the head scores
    y, _ = align_labels(scored.ids, test_labels)
    assert auroc(y, scored.scores) > 0.8
    # the same directory without its head scores as the unsupervised detector
    (tmp_path / "m" / HEAD).unlink()
    plain = SequenceDetector.load(tmp_path / "m", progress=False)
    np.testing.assert_allclose(plain.decision_function(test_ev), unsupervised)


def test_alert_rate_stays_calibrated(fitted, labelled_data):
    """On the calibration shoppers the head's threshold flags the target share (as without
    a head); on new normal shoppers near it."""
    train_ev, labels, test_ev, test_labels = labelled_data
    seqs = build_sequences(train_ev, fitted.tokenizer_config)
    split = labelled_split(seqs.ids, labels)
    _, calib_idx = partition(len(seqs), split, fitted.train_config.calibration_fraction, 0)
    flagged = fitted.predict(seqs.subset(calib_idx))
    assert abs(flagged.mean() - 0.1) <= 1.5 / len(calib_idx)
    scored = fitted.score_shoppers(test_ev)
    y, _ = align_labels(scored.ids, test_labels)
    assert fitted.flag(scored.scores)[y == 0].mean() <= 0.25


def test_a_model_directory_without_a_head_scores_as_before(small_split, tmp_path):
    train_ev, test_ev, _ = small_split
    det = _fit(train_ev)
    assert det.head_ is None
    det.save(tmp_path / "m")
    assert not (tmp_path / "m" / HEAD).exists()
    loaded = SequenceDetector.load(tmp_path / "m", progress=False)
    np.testing.assert_array_equal(loaded.decision_function(test_ev), det.decision_function(test_ev))


def test_labels_with_dp_are_refused(labelled_data):
    train_ev, labels, _, _ = labelled_data
    det = make_detector("lstm", train_config=TrainConfig(dp=DPConfig(noise_multiplier=1.0)),
                        progress=False)
    with pytest.raises(ConfigError, match="go without DP"):
        det.fit(train_ev, labels=labels)


def test_cli_train_labels_errors_are_one_line(tmp_path, capsys, labelled_data):
    from seqanom_core.ingest import write_events

    train_ev, _, _, _ = labelled_data
    write_events(train_ev, tmp_path / "train.parquet")
    bad = tmp_path / "other.csv"
    bad.write_text("user_id,is_anomalous\nnobody,1\nno-one,0\n")
    base = ["-q", "train", "--data", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "m"),
            "--epochs", "1", "--labels", str(bad)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "not shoppers" in err
    assert main([*base, "--dp", "--noise-multiplier", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--labels goes without --dp" in err
    assert not (tmp_path / "m").exists()


def test_cli_train_with_labels_then_score(tmp_path, capsys, labelled_data):
    from seqanom_core.ingest import write_events

    train_ev, labels, test_ev, test_labels = labelled_data
    write_events(train_ev, tmp_path / "train.parquet")
    write_events(test_ev, tmp_path / "test.parquet")
    labels.to_csv(tmp_path / "lab.csv", index=False)
    test_labels.to_csv(tmp_path / "test_lab.csv", index=False)
    assert main(["-q", "train", "--data", str(tmp_path / "train.parquet"), "--model", "lstm",
                 "--out", str(tmp_path / "m"), "--epochs", "1", "--d-model", "16",
                 "--layers", "1", "--labels", str(tmp_path / "lab.csv")]) == 0
    assert "supervised head on 20 labelled anomalous and 20 labelled normal" in capsys.readouterr().out
    assert (tmp_path / "m" / HEAD).is_file()
    assert main(["-q", "score", "--model", str(tmp_path / "m"), "--data",
                 str(tmp_path / "test.parquet"), "--out", str(tmp_path / "s.csv"),
                 "--labels", str(tmp_path / "test_lab.csv")]) == 0
    assert "scores of the supervised head (20 labelled anomalous" in capsys.readouterr().out
