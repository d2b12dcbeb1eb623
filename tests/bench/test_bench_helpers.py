"""The helpers every detection benchmark shares (bench/__init__.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import detection_summary, run_seqanom


def test_detection_summary_is_the_same_from_labels_and_from_a_run_evaluation():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.2, 0.9, 0.05])
    kinds = np.array(["", "", "", "a", "b", "", "a", ""])
    computed = detection_summary(y, scores, kinds)
    assert computed["auroc"] == round(13 / 15, 4)  # two normals (0.4, 0.35) above the anomaly at 0.3
    assert computed["auroc_per_kind"] == {"a": 1.0, "b": 0.6}
    raw = {"auroc": 13 / 15, "auprc": 0.91234567, "recall_at_fpr": {"1%": 0.666666},
           "auroc_per_kind": {"a": 1.0, "b": 0.6}}
    taken = detection_summary(evaluation=raw)
    assert taken == {"auroc": 0.8667, "auprc": 0.9123, "recall_at_fpr": {"1%": 0.6667},
                     "auroc_per_kind": {"a": 1.0, "b": 0.6}}


def test_run_seqanom_raises_with_the_command_and_its_error():
    with pytest.raises(RuntimeError, match=r"train failed \(2\).*--out"):
        run_seqanom("train")
