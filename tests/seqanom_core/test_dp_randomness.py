"""DP-SGD's randomness (Poisson sampling, Gaussian noise): secret by default, reproducible only on
request, and never shared between the sites of a federation."""

from __future__ import annotations

import numpy as np
import pytest

from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.federation.site_round import SiteData, site_seed, train_round
from seqanom_core.models import build_model, model_arrays
from seqanom_core.privacy_ledger import PrivacyLedger
from seqanom_core.sequences import build_sequences, split_shoppers, vocab_sizes

TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=32)


def _fit_arrays(train, dp: DPConfig) -> tuple[dict[str, np.ndarray], dict]:
    det = make_detector("transformer", model_config=TINY, progress=False,
                        train_config=TrainConfig(epochs=1, batch_size=32, seed=0, dp=dp)).fit(train)
    return model_arrays(det.network_), det.privacy_summary()


def _differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


def test_noise_is_drawn_afresh_unless_a_dp_seed_is_given(small_split):
    train, _, _ = small_split
    fresh = [_fit_arrays(train, DPConfig(noise_multiplier=1.0)) for _ in range(2)]
    # same training seed, same data, same initial weights: only the DP randomness differs
    assert _differ(fresh[0][0], fresh[1][0])
    assert "from the OS" in fresh[0][1]["randomness"]
    seeded = [_fit_arrays(train, DPConfig(noise_multiplier=1.0, seed=5)) for _ in range(2)]
    assert not _differ(seeded[0][0], seeded[1][0])
    assert "dp seed 5" in seeded[0][1]["randomness"]
    assert _differ(seeded[0][0], _fit_arrays(train, DPConfig(noise_multiplier=1.0, seed=6))[0])


def test_dp_seed_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="DP seed"):
            DPConfig(epsilon=1.0, seed=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("dp_seed", [-1, 7])
def test_sites_with_the_same_run_config_add_independent_noise(small_split, dp_seed):
    """Two sites of the same size under one run config (one seed) used to draw the same Poisson
    batches and the same noise, so FedAvg could not average the noise down. Here the two sites
    even hold the same shoppers: their updates must still be nearly orthogonal (noise-dominated,
    independent), with a DP seed (reproducible runs) as without."""
    train, _, _ = small_split
    tok = TokenizerConfig()
    seqs, valid = split_shoppers(build_sequences(train, tok), 0.2, 0)
    settings = settings_from_run_config({
        "d-model": 16, "n-layers": 1, "n-heads": 2, "max-len": 32, "batch-size": 16,
        "local-epochs": 1, "dp": True, "noise-multiplier": 2.0, "dp-seed": dp_seed})
    start = model_arrays(build_model(settings.model, vocab_sizes(tok, "events")))
    updates = []
    for name in ("site-0", "site-1"):
        out = train_round(SiteData(name, seqs, valid), settings, start, ledger=PrivacyLedger(),
                          server_round=1, rounds_left=1)
        assert out.arrays is not None
        updates.append(np.concatenate([(out.arrays[k] - start[k]).ravel() for k in start
                                       if start[k].dtype.kind == "f"]))
    a, b = updates
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert abs(cosine) < 0.3, cosine  # it was 1.000 when the sites shared their randomness


def test_site_seeds_differ_by_site_and_round():
    seeds = {site_seed(0, f"site-{k}", r) for k in range(20) for r in range(1, 6)}
    assert len(seeds) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert site_seed(0, "site-0", 1) == site_seed(0, "site-0", 1)
