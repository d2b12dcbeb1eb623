"""``seqanom audit`` end to end on the built-in generator: the JSON it writes, and its errors."""

from __future__ import annotations

import json

import pytest

from simulation.cli import main

TINY = ["--shoppers", "60", "--canaries", "24", "--canary-length", "10", "--epochs", "2",
        "--d-model", "16", "--layers", "1", "--max-len", "32"]


def test_audit_without_dp_writes_the_record(tmp_path, capsys):
    assert main(["-q", "audit", *TINY, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert 0.0 <= r["mia_auc"] <= 1.0
    assert r["epsilon_lower_bound"] >= 0.0 and r["epsilon_accounted"] is None and r["dp"] is False
    assert r["canaries"] == {"canaries": 24, "canary_length": 10, "seed": 3,
                             "members": r["canaries"]["members"]}
    assert 0 < r["canaries"]["members"] < 24
    # real training shoppers: the 80% of the 60 that are not held out; the canaries in join them
    assert r["n_real_training_shoppers"] == 48
    assert r["n_train_shoppers"] == 48 + r["canaries"]["members"]
    assert "membership inference AUC" in out and "audit written to" in out
    assert f"{r['epsilon_lower_bound']:.3f}" in out


def test_audit_with_dp_states_the_accounted_epsilon(tmp_path, capsys):
    assert main(["-q", "audit", *TINY, "--dp", "--epsilon", "8", "--dp-seed", "1",
                 "--out", str(tmp_path / "dp")]) == 0
    r = json.loads((tmp_path / "dp" / "audit.json").read_text())
    assert r["dp"] is True and 0 < r["epsilon_accounted"] <= 8.0 + 1e-9
    assert 0 < r["delta"] < 1e-3 and r["bound"]["delta"] == r["delta"]
    # 24 canaries cannot show much: the bound stays under the accounted epsilon
    assert 0.0 <= r["epsilon_lower_bound"] < r["epsilon_accounted"]
    assert "accounted epsilon" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [(["--canaries", "1"], "at least 2 canaries"),
                                           (["--epsilon", "8"], "need --dp"),
                                           (["--format", "taobao"], "only used with --data")])
def test_bad_audit_options_are_one_line_errors(tmp_path, capsys, extra, needle):
    code = main(["-q", "audit", *TINY, *extra, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
