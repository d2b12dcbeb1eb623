"""The pretrained model that ships with seqanom (``builtin``): one JSON file that unpacks to the
model directory it was packed from, loads wherever a pretrained directory is asked for, and
fails in one line when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqanom_core.builtin_model import BUILTIN, BUILTIN_FILE, pack, resolve, unpack
from seqanom_core.errors import ConfigError
from seqanom_core.federation.global_model import pretrained_digest
from seqanom_core.models.transfer import arrays_digest, model_arrays
from seqanom_core.pretraining import load_pretrained


def test_the_shipped_model_is_a_simulation_shaped_model_of_synthetic_shoppers():
    det = load_pretrained(BUILTIN)
    m = det.model_config
    assert (m.kind, m.d_model, m.n_layers, m.max_len) == ("transformer", 32, 2, 64)
    meta = det.metadata_["pretraining"]
    assert meta["format"] == "synthetic" and meta["data"][0].startswith("built-in generator")
    assert not det.metadata_["privacy"]["dp"]  # the central team's own (synthetic) data
    # the name means the same weights everywhere: the digest the run config carries
    assert pretrained_digest(BUILTIN) == arrays_digest(model_arrays(det.network_))
    assert resolve(BUILTIN).is_dir() and resolve("/x/y").as_posix() == "/x/y"


def test_pack_and_unpack_give_back_the_model_directory(tmp_path):
    again = unpack(pack(resolve(BUILTIN), tmp_path / "packed.json"), tmp_path / "dir")
    for name in ("config.json", "calibration.json", "metadata.json"):
        assert json.loads((again / name).read_text()) == json.loads(
            (resolve(BUILTIN) / name).read_text())
    a = model_arrays(load_pretrained(again).network_)
    b = model_arrays(load_pretrained(BUILTIN).network_)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "packed.json").stat().st_size == pytest.approx(
        BUILTIN_FILE.stat().st_size, rel=0.01)


@pytest.mark.parametrize("damage", ["not json", '{"config.json": {}}',
                                    '{"model.safetensors": "***", "config.json": {}, '
                                    '"calibration.json": {}, "metadata.json": {}}'])
def test_a_damaged_packed_model_is_one_line(tmp_path, damage):
    bad = tmp_path / "bad.json"
    bad.write_text(damage)
    with pytest.raises(ConfigError, match=r"bad\.json: not a packed model") as err:
        unpack(bad, tmp_path / "out")
    assert "\n" not in str(err.value)
