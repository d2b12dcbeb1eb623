"""The score-summary query reuses the validation statistics of the same round's evaluate call."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, RecordDict

import client.app as client_app
from seqanom_core.federation.calibration_histograms import tree_levels
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.federation.site_round import (
    ReleaseContext,
    SitePaths,
    evaluate_round,
    load_site,
    score_summary,
)
from seqanom_core.models import arrays_digest, build_model, model_arrays
from seqanom_core.scoring import ScoreCalibrator
from seqanom_core.sequences import vocab_sizes

CONFIG = {"d-model": 16, "n-layers": 1, "n-heads": 2, "max-len": 32, "dp": False}


def _global_arrays(settings, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return model_arrays(build_model(settings.model, vocab_sizes(settings.tokenizer, "events")))


def test_reused_statistics_give_the_same_score_histogram(site_dirs):
    settings = settings_from_run_config(CONFIG)
    site = load_site(SitePaths("site-0", site_dirs / "site-0" / "train.parquet", "seqanom"),
                     settings.tokenizer, 0.2, 0)
    arrays = _global_arrays(settings, 0)
    ev = evaluate_round(site, settings, arrays, ledger=None, ctx=ReleaseContext("r", 1, 1))
    assert ev.valid_stats.shape[0] == len(site.valid)  # no DP: validation shoppers only
    cal = ScoreCalibrator().fit(ev.valid_stats)
    _, fresh = score_summary(site, settings, arrays, cal, ledger=None,
                             ctx=ReleaseContext("r", 1, 2))
    _, reused = score_summary(site, settings, arrays, cal, ledger=None,
                              ctx=ReleaseContext("r", 1, 2), valid_stats=ev.valid_stats)
    # noise 0.5 per count around the exact counts, identical for the same seed
    assert abs(tree_levels(fresh)[-1].sum() - len(site.valid)) < 3 and np.array_equal(fresh, reused)


def test_kept_statistics_are_used_only_for_the_model_they_came_from():
    settings = settings_from_run_config(CONFIG)
    a, b = _global_arrays(settings, 0), _global_arrays(settings, 1)
    assert arrays_digest(a) == arrays_digest({k: v.copy() for k, v in a.items()})
    assert arrays_digest(a) != arrays_digest(b)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert client_app._kept_valid_stats(context, a) is None
    stats = np.arange(6, dtype=np.float64).reshape(3, 2)
    context.state[client_app._VALID_STATS] = client_app.to_array_record({"stats": stats})
    context.state[client_app._VALID_STATS_MODEL] = client_app.ConfigRecord(
        {"digest": arrays_digest(a)})
    assert np.array_equal(client_app._kept_valid_stats(context, a), stats)
    assert client_app._kept_valid_stats(context, b) is None
