"""End-to-end checks on the public Taobao sample (slow) and on a GPU when one is present."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from seqanom_core.config import ModelConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.ingest import read_events
from seqanom_core.metrics import auroc


def _taobao_split(shared_data):
    from simulation.inject import inject_anomalies

    events, _ = read_events(shared_data / "taobao_userbehavior_users_sample.csv.gz", "taobao")
    users = np.unique(events.column("user_id").to_numpy(zero_copy_only=False))
    test = np.random.default_rng(0).choice(users, size=int(0.3 * len(users)), replace=False)
    is_test = pc.is_in(events.column("user_id"), value_set=pa.array(test))
    test_ev, labels = inject_anomalies(events.filter(is_test), rate=0.3, seed=1)
    return events.filter(pc.invert(is_test)), test_ev, labels


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_taobao_injected_anomalies_are_separated(shared_data, kind):
    train, test, labels = _taobao_split(shared_data)
    det = make_detector(kind, train=TrainConfig(epochs=8), progress=False).fit(train)
    scored = det.score_shoppers(test)
    y = labels.set_index("user_id").loc[scored.ids].is_anomalous.to_numpy()
    assert auroc(y, scored.scores) > 0.85


@pytest.mark.gpu
def test_trains_and_scores_on_cuda(small_split):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    train, test, _ = small_split
    det = make_detector("lstm", model=ModelConfig(kind="lstm", d_model=32, n_layers=1),
                        train=TrainConfig(epochs=1), progress=False).fit(train)
    assert det.device_.type == "cuda"
    assert np.isfinite(det.decision_function(test)).all()
