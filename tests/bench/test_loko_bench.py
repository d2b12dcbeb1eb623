"""The leave-one-kind-out choice of bench/loko_bench.py: a kind's figure never comes from a
setting chosen with that kind."""

from __future__ import annotations

from bench.loko_bench import leave_one_kind_out


def _r(**kinds: float) -> dict:
    return {"auroc": sum(kinds.values()) / len(kinds), "auroc_per_kind": kinds}


def test_each_kind_is_reported_under_the_setting_chosen_on_the_others():
    results = {"a": _r(x=0.9, y=0.9, z=0.2), "b": _r(x=0.6, y=0.6, z=1.0)}
    out = leave_one_kind_out(results)
    # z's best setting (b) is not chosen for z: on x and y, a is better
    assert out["per_kind"]["z"] == {"chosen": "a", "auroc": 0.2}
    # x held out: mean of y, z is 0.55 under a, 0.8 under b
    assert out["per_kind"]["x"] == {"chosen": "b", "auroc": 0.6}
    assert out["per_kind"]["y"] == {"chosen": "b", "auroc": 0.6}
    assert out["worst_held_out_kind"] == "z"
    assert out["mean_held_out_auroc"] == round((0.2 + 0.6 + 0.6) / 3, 4)
    assert out["chosen_on_all_kinds"] == "b"  # mean 0.733 against 0.667
