"""How often real shoppers' funnels run "backwards", and what a per-shopper funnel statistic would
add to the score (issue 19, deliverable 3: ``impossible_order`` below chance).

``impossible_order`` puts each item's buy, then cart/fav, before its views. Whether that is
anomalous depends on the data set, so this measures, on each data set's clean training shoppers
(``loko_bench``'s split: 70% of them; no model):

* ``later_stage_first``: of the (shopper, item) pairs with a view and a cart/fav/buy, the share
  whose first cart/fav/buy comes *before* the first view;
* ``view_after_buy``: of the bought items the shopper also viewed, the share with a view after
  the buy;
* ``first_touch_later``: the share of cart/fav/buy events on an item the shopper never touched
  before (what the funnel item state calls a "new item");
* ``shoppers_with_regression``: the share of shoppers with a funnel regression (an event whose
  stage, view < cart/fav < buy, is below the furthest stage the shopper already reached on
  that item);

and then, with every anomaly kind injected into the held-out shoppers as ``loko_bench`` does
(``_split``: 30% of the shoppers, rate 0.3, the seed), the AUROC per kind of the per-shopper
funnel statistic ``regressions per event`` on its own (``funnel_statistic``).

With ``--model``, it also trains ``loko_bench``'s ``plain`` model with funnel item states on the
clean training shoppers and scores the test shoppers. The statistic is standardised like the
others (``ScoreCalibrator``, robust centre and scale) on a random half of the normal test
shoppers and added to the statistics the top-3 score averages; both scores are evaluated on the
other half of the normal shoppers and all anomalous ones (``score`` against ``score_with_funnel``),
so no figure is computed on the shoppers the statistic was standardised on.

    python -m bench.funnel_order_bench [--datasets synthetic taobao tmall] [--seed 0] [--model]
        [--out JSON]
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from bench import detection_summary, emit, envelope, setup_logging

log = logging.getLogger("bench.funnel_order")


def _stage(behavior: np.ndarray) -> np.ndarray:
    from seqanom_core.sequences import FUNNEL_STAGE

    return FUNNEL_STAGE[np.asarray(behavior, dtype=np.int64)]


def funnel_facts(events: pa.Table) -> dict[str, float]:
    """The data set's funnel direction facts (see the module docstring)."""
    import pandas as pd

    df = events.select(["user_id", "item_id", "behavior", "timestamp"]).to_pandas()
    df["row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "row"])
    df["pos"] = np.arange(len(df))
    stage = _stage(df["behavior"].to_numpy())
    key = ["user_id", "item_id"]
    first_view = df[stage == 1].groupby(key)["pos"].min()
    first_later = df[stage > 1].groupby(key)["pos"].min()
    both = pd.concat([first_view.rename("v"), first_later.rename("n")], axis=1).dropna()
    first_buy = df[df["behavior"] == 3].groupby(key)["pos"].min()
    last_view = df[stage == 1].groupby(key)["pos"].max()
    bought = pd.concat([first_buy.rename("b"), last_view.rename("v")], axis=1).dropna()
    first_touch = ~df.duplicated(key)
    reg = regressions(df["user_id"].to_numpy(), df["item_id"].to_numpy(), stage)
    per_shopper = pd.Series(reg).groupby(df["user_id"].to_numpy()).any()
    return {"pairs_with_view_and_later_stage": int(len(both)),
            "later_stage_first": round(float((both["n"] < both["v"]).mean()), 4),
            "view_after_buy": round(float((bought["v"] > bought["b"]).mean()), 4),
            "first_touch_later": round(float(first_touch[stage > 1].mean()), 4),
            "shoppers_with_regression": round(float(per_shopper.mean()), 4)}


def regressions(user: np.ndarray, item: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Per event (rows grouped by shopper, time-ordered): whether its funnel stage is below the
    furthest stage the shopper reached on the item before it."""
    out = np.zeros(len(stage), dtype=bool)
    furthest: dict[tuple[Any, Any], int] = {}
    for k, (u, i, s) in enumerate(zip(user, item, stage, strict=True)):
        before = furthest.get((u, i), 0)
        out[k] = s < before
        furthest[(u, i)] = max(before, int(s))
    return out


def shopper_regression_rate(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(shopper ids, funnel regressions per event) of every shopper in ``events``."""
    df = events.select(["user_id", "item_id", "behavior", "timestamp"]).to_pandas()
    df["row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "row"])
    reg = regressions(df["user_id"].to_numpy(), df["item_id"].to_numpy(),
                      _stage(df["behavior"].to_numpy()))
    rate = df.assign(reg=reg).groupby("user_id", sort=True)["reg"].mean()
    return rate.index.to_numpy().astype(str), rate.to_numpy()


def _with_model(split: tuple, rate_of: dict[str, float], seed: int) -> dict[str, Any]:
    from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.labels import align_labels
    from seqanom_core.scoring import ScoreCalibrator

    train, test, labels = split
    model = ModelConfig(d_model=32, n_layers=2, max_len=64)
    det = make_detector(model.kind, model_config=model, progress=False,
                        train_config=TrainConfig(epochs=20, batch_size=16, seed=seed),
                        tokenizer_config=TokenizerConfig(item_states="funnel")).fit(train)
    scored = det.score_shoppers(test)
    y, kinds = align_labels(scored.ids, labels, "labels")
    rate = np.array([rate_of[str(i)] for i in scored.ids])
    normal = np.flatnonzero(y == 0)
    calib = np.random.default_rng(seed).permutation(normal)[: len(normal) // 2]
    keep = np.setdiff1d(np.arange(len(y)), calib)
    funnel = ScoreCalibrator().fit(rate[calib, None])
    z = np.column_stack([det.calibrator_.standardise(scored.stats), funnel.standardise(rate[:, None])])
    k = det.calibrator_.top_k
    combined = np.partition(z, z.shape[1] - k, axis=1)[:, z.shape[1] - k:].mean(axis=1)
    return {"evaluated_normal_shoppers": int((y[keep] == 0).sum()),
            "score": detection_summary(y[keep], scored.scores[keep], kinds[keep]),
            "score_with_funnel": detection_summary(y[keep], combined[keep], kinds[keep])}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (or write) its JSON."""
    from bench.loko_bench import _split
    from seqanom_core.labels import align_labels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "taobao", "tmall"],
                   choices=["synthetic", "taobao", "tmall"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", action="store_true", help="also train a model per data set")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    t0 = time.time()
    out: dict[str, Any] = {}
    for dataset in args.datasets:
        split = _split(dataset, args.seed)
        train, test, labels = split
        ids, rate = shopper_regression_rate(test)
        y, kinds = align_labels(ids, labels, "labels")
        out[dataset] = {"facts": funnel_facts(train),
                        "funnel_statistic": detection_summary(y, rate, kinds)}
        log.info("%s: %s", dataset, out[dataset]["facts"])
        if args.model:
            out[dataset]["model"] = _with_model(split, dict(zip(ids, rate, strict=True)),
                                                args.seed)
    emit(envelope("funnel_order_bench", {k: v for k, v in vars(args).items() if k != "out"}, out,
                  round(time.time() - t0, 1)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
