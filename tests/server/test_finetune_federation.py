"""A federation that starts from a pretrained model and fine-tunes adapters (run config
``pretrained``, ``finetune``): what travels, what the final model is, resume, and the checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fedtools import InProcessGrid, tiny_run_config
from safetensors.numpy import load_file

from client.app import app as client_app
from seqanom_core.config import ModelConfig, TrainConfig
from seqanom_core.detector import SequenceDetector, make_detector
from seqanom_core.errors import ConfigError
from seqanom_core.federation import message_keys
from seqanom_core.federation.global_model import (
    build_federated_model,
    initial_global_arrays,
    pretrained_digest,
)
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.ingest import read_events
from seqanom_core.models.finetune import trainable_names
from server.checkpoints import GLOBAL_FILE, list_checkpoints
from server.federated_run import FederatedRun
from server.strategies import build_strategy

NODES = {101: {"partition-id": 0}, 102: {"partition-id": 1}, 103: {"partition-id": 2}}
TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=32)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, site_dirs) -> Path:
    """A tiny model pretrained on site 0's training shoppers (the run config's model)."""
    out = tmp_path_factory.mktemp("pre") / "model"
    events = read_events(site_dirs / "site-0" / "train.parquet", "seqanom")[0]
    make_detector("transformer", model_config=TINY, train_config=TrainConfig(epochs=1),
                  progress=False).fit(events).save(out)
    return out


def _run(cfg: dict):
    grid = InProcessGrid(client_app, NODES, cfg)
    s = settings_from_run_config(cfg)
    run = FederatedRun(grid, build_strategy(s.federation), s, "test",
                       Path(cfg["final-model-dir"]))
    return run.run(), grid


def test_sites_send_only_the_adapters_and_the_final_model_is_plain(tmp_path, site_dirs,
                                                                  pretrained):
    cfg = tiny_run_config(tmp_path, site_dirs, **{
        "num-rounds": 3, "dp": False, "pretrained": str(pretrained), "finetune": "adapters",
        "adapter-rank": 2, "pretrained-digest": pretrained_digest(str(pretrained))})
    records, grid = _run(cfg)
    settings = settings_from_run_config(cfg)
    model = build_federated_model(settings)
    trainable = trainable_names(model)
    sent_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    full = build_federated_model(settings_from_run_config(tiny_run_config(tmp_path, site_dirs)))
    full_bytes = sum(p.numel() * 4 for p in full.parameters())
    replies = [m for m in grid.sent if message_keys.ARRAYS in m.content]
    assert replies and all(sorted(m.content[message_keys.ARRAYS].keys()) == trainable
                           for m in replies)
    # the event vocabulary's rows (embedding, head) dominate a model this small
    assert all(r.message_model_bytes == sent_bytes < full_bytes for r in records)
    pre = SequenceDetector.load(pretrained, progress=False)
    final = SequenceDetector.load(tmp_path / "model", progress=False)
    assert final.metadata_["pretrained"]["finetune"] == "adapters"
    p_state, f_state = pre.network_.state_dict(), final.network_.state_dict()
    assert set(p_state) == set(f_state)
    torch.testing.assert_close(f_state["emb.gap.weight"], p_state["emb.gap.weight"])  # frozen
    delta = f_state["blocks.0.attn.qkv.weight"] - p_state["blocks.0.attn.qkv.weight"]
    assert 0 < torch.linalg.matrix_rank(delta).item() <= 2  # FedAvg of rank-2 adapters
    # every checkpoint keeps the travelling arrays; the calibrated one is a model directory too
    ckpts = list_checkpoints(tmp_path / "ckpt")
    assert all(sorted(load_file(str(p / GLOBAL_FILE))) == trainable for _, p in ckpts)
    assert (ckpts[-1][1] / "config.json").is_file()
    # resumed after round 1 (the adapters' arrays), it finishes the run
    for r in (2, 3):
        shutil.rmtree(tmp_path / "ckpt" / f"round-{r:04d}")
    records, _ = _run(dict(cfg, resume=True))
    assert [r.round for r in records] == [1, 2, 3] and records[-1].threshold is not None
    line = json.loads((tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["message_model_bytes"] == records[-1].message_model_bytes


def test_the_pretrained_model_is_checked(tmp_path, site_dirs, pretrained):
    with pytest.raises(ConfigError, match="set pretrained"):
        settings_from_run_config(tiny_run_config(tmp_path, site_dirs, finetune="head"))
    wrong = tiny_run_config(tmp_path, site_dirs, **{
        "pretrained": str(pretrained), "pretrained-digest": "0" * 64})
    with pytest.raises(ConfigError, match="not the run's pretrained model"):
        initial_global_arrays(settings_from_run_config(wrong))
    other = tiny_run_config(tmp_path, site_dirs, **{"pretrained": str(pretrained),
                                                     "d-model": 32})
    with pytest.raises(ConfigError, match="model settings differ: d_model 32"):
        initial_global_arrays(settings_from_run_config(other))
    missing = tiny_run_config(tmp_path, site_dirs, pretrained=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="run config pretrained"):
        initial_global_arrays(settings_from_run_config(missing))
