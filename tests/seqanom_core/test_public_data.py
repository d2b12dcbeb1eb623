"""End-to-end checks on the public Taobao sample (slow) and on a GPU when one is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqanom_core.config import ModelConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.ingest import read_events
from seqanom_core.metrics import auroc
from seqanom_core.models import backbone_kinds
from seqanom_core.sequences import split_events_by_shopper


def _taobao_split(shared_data):
    from simulation.inject import inject_anomalies

    events, _ = read_events(shared_data / "taobao_userbehavior_users_sample.csv.gz", "taobao")
    train, test = split_events_by_shopper(events, 0.3, seed=0)
    test_ev, labels = inject_anomalies(test, rate=0.3, seed=1)
    return train, test_ev, labels


@pytest.mark.slow
@pytest.mark.parametrize("kind", backbone_kinds())
def test_taobao_injected_anomalies_are_separated(shared_data, kind):
    train, test, labels = _taobao_split(shared_data)
    det = make_detector(kind, train_config=TrainConfig(epochs=8), progress=False).fit(train)
    scored = det.score_shoppers(test)
    y = labels.set_index("user_id").loc[scored.ids].is_anomalous.to_numpy()
    assert auroc(y, scored.scores) > 0.85


@pytest.mark.gpu
def test_trains_and_scores_on_cuda(small_split):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    train, test, _ = small_split
    det = make_detector("lstm", model_config=ModelConfig(kind="lstm", d_model=32, n_layers=1),
                        train_config=TrainConfig(epochs=1), progress=False).fit(train)
    assert det.device_.type == "cuda"
    assert np.isfinite(det.decision_function(test)).all()
