"""Semi-supervised mode: does a supervised head on a few labelled shoppers raise test AUROC?

Per seed: synthetic shoppers (``simulation.synth``) split by shopper into train and test; labelled
anomalies injected into both (``simulation.inject``, every kind). Of the training shoppers'
anomalies a seeded ``--label-share`` (10%) is revealed as labelled anomalous, with as many
labelled normal shoppers; every other training shopper is unlabelled. The same detector is
trained twice: without labels (unsupervised, as ``seqanom train``) and with them
(``train --labels``). Both are scored on the test shoppers: AUROC, recall at 1% FPR, the share of
normal test shoppers flagged (target: the alert rate), AUROC per kind.

Held-out kinds: on the labelled run's model, the head is refitted once per kind without that
kind's labelled anomalies (its AUROC on the test shoppers of that kind, against the
unsupervised run's). The model itself was still trained without those labelled shoppers.

    python -m bench.supervised_head_bench [--shoppers 1000] [--seeds 0 1 2] [--epochs 3] [--out JSON]
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from bench import emit, envelope, setup_logging

log = logging.getLogger("bench.supervised_head")


def _reveal(labels: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """A seeded ``share`` of the anomalous shoppers, with as many normal ones."""
    rng = np.random.default_rng(seed)
    pos = labels[labels.is_anomalous == 1]
    neg = labels[labels.is_anomalous == 0]
    n = max(1, int(round(share * len(pos))))
    return pd.concat([pos.iloc[rng.choice(len(pos), n, replace=False)],
                      neg.iloc[rng.choice(len(neg), n, replace=False)]]).reset_index(drop=True)


def _evaluate(det: Any, scores: np.ndarray, y: np.ndarray, kinds: np.ndarray) -> dict[str, Any]:
    from seqanom_core.metrics import auroc, auroc_per_kind, recall_at_fpr

    return {"auroc": round(auroc(y, scores), 4),
            "recall_at_1pct_fpr": round(recall_at_fpr(y, scores, (0.01,))["1%"], 4),
            "normal_flagged": round(float(det.flag(scores)[y == 0].mean()), 4),
            "auroc_per_kind": {k: round(v, 4) for k, v in auroc_per_kind(y, scores, kinds).items()}}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from seqanom_core.config import ModelConfig, TokenizerConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.labels import align_labels
    from seqanom_core.metrics import auroc
    from seqanom_core.scoring import score_statistics
    from seqanom_core.sequences import build_sequences, split_events_by_shopper
    from seqanom_core.supervised import fit_head, head_features, labelled_split, partition
    from simulation.inject import inject_anomalies
    from simulation.synth import SynthConfig, synthesize_events

    events = synthesize_events(SynthConfig(n_shoppers=args.shoppers, n_sites=1, seed=seed))
    train_ev, test_ev = split_events_by_shopper(events, 0.25, seed)
    train_ev, train_labels = inject_anomalies(train_ev, rate=args.rate, seed=seed)
    test_ev, test_labels = inject_anomalies(test_ev, rate=args.rate, seed=seed + 1000)
    revealed = _reveal(train_labels, args.label_share, seed)
    tok = TokenizerConfig()
    train, test = build_sequences(train_ev, tok), build_sequences(test_ev, tok)
    y, kinds = align_labels(test.ids, test_labels)
    out: dict[str, Any] = {"seed": seed, "n_train": len(train), "n_test": len(test),
                           "n_train_anomalous": int(train_labels.is_anomalous.sum()),
                           "n_test_anomalous": int(y.sum()),
                           "revealed_anomalous": int(revealed.is_anomalous.sum()),
                           "revealed_normal": int((revealed.is_anomalous == 0).sum())}

    def detector() -> Any:
        return make_detector(args.model, model_config=ModelConfig(kind=args.model,
                                                                  d_model=args.d_model),
                             tokenizer_config=tok, progress=False,
                             train_config=TrainConfig(epochs=args.epochs, seed=seed))

    t0 = time.time()
    plain = detector().fit(train)
    out["unlabelled"] = _evaluate(plain, plain.decision_function(test), y, kinds)
    t1 = time.time()
    sup = detector().fit(train, labels=revealed)
    test_stats = sup.score_shoppers(test).stats
    out["labelled"] = _evaluate(sup, sup.decision_function(test), y, kinds)
    # the labelled run's model and calibration without its head: what keeping the labelled
    # anomalies out of training gives by itself
    out["labelled_head_off_auroc"] = round(auroc(y, sup.calibrator_.score(test_stats)[0]), 4)
    out["gain_auroc"] = round(out["labelled"]["auroc"] - out["unlabelled"]["auroc"], 4)
    out["seconds"] = {"unlabelled": round(t1 - t0, 1), "labelled": round(time.time() - t1, 1)}
    log.info("seed %d: AUROC %.4f unlabelled, %.4f labelled", seed,
             out["unlabelled"]["auroc"], out["labelled"]["auroc"])

    # held-out kinds: refit the head without one kind's labelled anomalies
    split = labelled_split(train.ids, revealed)
    _, calib_idx = partition(len(train), split, sup.train_config.calibration_fraction, seed)
    _, calib_stats = score_statistics(sup.network_, train.subset(calib_idx), sup.device_)
    _, anom_stats = score_statistics(sup.network_, train.subset(split.anomalous), sup.device_)
    anom_kinds = align_labels(train.ids[split.anomalous], train_labels)[1]
    x_test = head_features(sup.calibrator_, test_stats)
    held: dict[str, Any] = {}
    for kind in sorted(set(anom_kinds)):
        keep = anom_kinds != kind
        if not keep.any():
            continue
        head = fit_head(sup.calibrator_, calib_stats, calib_idx, anom_stats[keep], split)
        m = (y == 0) | (kinds == kind)
        held[kind] = {"unlabelled": out["unlabelled"]["auroc_per_kind"].get(kind),
                      "all_labels": out["labelled"]["auroc_per_kind"].get(kind),
                      "kind_left_out": round(auroc(y[m], head.decision(x_test[m])), 4)}
    out["held_out_kinds"] = held
    # the ridge penalty, on the same model and labels (test AUROC)
    sweep = {}
    for l2 in (0.01, 0.1, 1.0, 10.0):
        head = fit_head(sup.calibrator_, calib_stats, calib_idx, anom_stats, split, l2=l2)
        sweep[str(l2)] = round(auroc(y, head.decision(x_test)), 4)
    out["l2_sweep_auroc"] = sweep
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shoppers", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.2, help="share of shoppers injected")
    p.add_argument("--label-share", type=float, default=0.1,
                   help="share of the training anomalies revealed as labelled")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--model", default="lstm")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    t0 = time.time()
    runs = [run_seed(s, args) for s in args.seeds]
    gains = [r["gain_auroc"] for r in runs]
    results = {"runs": runs, "mean_gain_auroc": round(float(np.mean(gains)), 4),
               "target_gain_auroc": 0.02, "target_met": bool(np.mean(gains) >= 0.02)}
    emit(envelope("supervised_head", vars(args), results, round(time.time() - t0, 1)), args.out)


if __name__ == "__main__":
    main()
