"""Leave-one-kind-out evaluation (issue 19): figures that predict anomaly kinds nobody tuned on.

For each data set (``synthetic``: the built-in generator; ``taobao``, ``tmall``: the public
samples in ``../shared/data``) and each training mode, every candidate setting is trained once
on clean shoppers and scored on held-out shoppers into which every anomaly kind is injected
(``simulation.inject``). The settings are item states (``basic``, ``funnel``; funnel models also
score the ``item:funnel`` statistic) x start (``scratch``; ``pretrained``: ``seqanom pretrain``
on the *other* public data set, no DP; ``builtin``: ``seqanom pretrain --synthetic 2500``, the
built-in generator, seed 101, 4 epochs: other shoppers than the synthetic data set's, seed 0).
Then, for each kind k, the setting with the best mean AUROC over the *other* kinds is chosen
and its AUROC on k reported (``loko``): a figure for a kind the choice never saw. The setting
chosen on all kinds and its overall AUROC, AUPRC and recall at FPR 0.1/0.2/1% are reported too.

Modes: ``plain`` (one site, no DP, ``rounds x local epochs`` = 20 epochs as simulate's
centralised baseline), ``dp`` (the same with DP-SGD, epsilon 8, delta 1e-5, one shopper = one
example), ``fed4`` / ``fed8`` (``seqanom simulate`` with 4 / 8 sites, DP epsilon 8 per site; the
simulation splits and injects itself, with the same seed in every setting). Model: simulate's
(Transformer, d_model 32, 2 layers, 64 positions); the pretrained models have that shape.

    python -m bench.loko_bench [--datasets synthetic taobao tmall] [--modes plain dp fed4 fed8]
        [--seed 0] [--work DIR] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import detection_summary, emit, envelope, run_seqanom, setup_logging

log = logging.getLogger("bench.loko")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {"taobao": ("taobao_userbehavior_users_sample.csv.gz", "taobao"),
         "tmall": ("tmall_2014_brand_behavior_log.csv.gz", "tmall")}
#: the public data set each data set's pretrained model learns from (never itself)
PRETRAIN_ON = {"synthetic": "tmall", "taobao": "tmall", "tmall": "taobao"}
ITEM_STATES = ("basic", "funnel")
STARTS = ("scratch", "pretrained", "builtin")
BUILTIN = ["--synthetic", "2500", "--synthetic-seed", "101", "--epochs", "4"]


def _data_args(dataset: str) -> list[str]:
    if dataset == "synthetic":
        return []
    name, fmt = FILES[dataset]
    return ["--data", str(DATA / name), "--format", fmt]


def _pretrain(dataset: str | None, states: str, work: Path) -> Path:
    """The pretrained model on the other public data set (None: the built-in generator)."""
    source = PRETRAIN_ON[dataset] if dataset else "builtin"
    out = work / f"pretrained-{source}-{states}"
    if not (out / "config.json").is_file():
        data = [*_data_args(source), "--epochs", "8"] if dataset else BUILTIN
        run_seqanom("pretrain", *data, "--size", "tiny", "--max-len", "64", "--item-states",
                    states, "--out", str(out))
    return out


def _split(dataset: str, seed: int) -> tuple[Any, Any, Any]:
    """(clean training events, test events with every kind injected, labels)."""
    from seqanom_core.ingest import read_nonempty_events
    from seqanom_core.sequences import split_events_by_shopper
    from simulation.inject import inject_anomalies
    from simulation.synth import SynthConfig, synthesize_events

    if dataset == "synthetic":
        events = synthesize_events(SynthConfig(n_shoppers=1200, seed=seed))
    else:
        name, fmt = FILES[dataset]
        events = read_nonempty_events(DATA / name, fmt)[0]
    train, test = split_events_by_shopper(events, 0.3, seed=seed)
    test, labels = inject_anomalies(test, rate=0.3, seed=seed)
    return train, test, labels


def _central(split: tuple, dp: bool, states: str, init: Path | None, seed: int) -> dict[str, Any]:
    from seqanom_core.config import DPConfig, ModelConfig, TokenizerConfig, TrainConfig
    from seqanom_core.detector import make_detector
    from seqanom_core.labels import align_labels
    from seqanom_core.pretraining import load_pretrained

    train, test, labels = split
    pre = load_pretrained(init) if init else None
    model = pre.model_config if pre else ModelConfig(d_model=32, n_layers=2, max_len=64)
    cfg = TrainConfig(epochs=20, batch_size=16, seed=seed,
                      dp=DPConfig(epsilon=8.0, delta=1e-5) if dp else None)
    det = make_detector(model.kind, model_config=model, train_config=cfg, progress=False,
                        tokenizer_config=TokenizerConfig(item_states=states)).fit(train, init=pre)
    scored = det.score_shoppers(test)
    y, kinds = align_labels(scored.ids, labels, "labels")
    return detection_summary(y, scored.scores, kinds)


def _federated(dataset: str, sites: int, states: str, init: Path | None, seed: int,
               work: Path) -> dict[str, Any]:
    out = work / f"{dataset}-fed{sites}-{states}-{init.name if init else 'scratch'}-s{seed}"
    extra = ["--pretrained", str(init)] if init else ["--item-states", states]
    run_seqanom("simulate", *_data_args(dataset), "--sites", str(sites), "--no-baselines",
                "--seed", str(seed), "--out", str(out), *extra,
                *(["--partition", "iid"] if dataset != "synthetic" else []))
    fed = json.loads((out / "metrics.json").read_text())["evaluation"]["federated"]
    return detection_summary(evaluation=fed)


def leave_one_kind_out(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per kind: the setting with the best mean AUROC over the other kinds, and its AUROC on the
    kind; the setting best over all kinds. ``results``: setting -> ``detection_summary`` output."""
    kinds = sorted(next(iter(results.values()))["auroc_per_kind"])
    per_kind = {}
    for k in kinds:
        def others(s: str, k: str = k) -> float:
            return float(np.mean([v for kk, v in results[s]["auroc_per_kind"].items() if kk != k]))
        chosen = max(results, key=others)
        per_kind[k] = {"chosen": chosen, "auroc": results[chosen]["auroc_per_kind"][k]}
    best = max(results, key=lambda s: np.mean(list(results[s]["auroc_per_kind"].values())))
    return {"per_kind": per_kind,
            "mean_held_out_auroc": round(float(np.mean([v["auroc"] for v in per_kind.values()])), 4),
            "worst_held_out_kind": min(per_kind, key=lambda k: per_kind[k]["auroc"]),
            "chosen_on_all_kinds": best, "overall": results[best]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (or write) its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "taobao", "tmall"],
                   choices=["synthetic", "taobao", "tmall"])
    p.add_argument("--modes", nargs="+", default=["plain", "dp", "fed4", "fed8"],
                   choices=["plain", "dp", "fed4", "fed8"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="directory for models and runs (default: a temporary one)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="loko-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for dataset in args.datasets:
        inits = {(s, start): _pretrain(dataset if start == "pretrained" else None, s, work)
                 for s in ITEM_STATES for start in STARTS[1:]}
        split = _split(dataset, args.seed) if {"plain", "dp"} & set(args.modes) else None
        out[dataset] = {}
        for mode in args.modes:
            results = {}
            for states in ITEM_STATES:
                for start in STARTS:
                    init = inits.get((states, start))
                    t = time.time()
                    if mode in ("plain", "dp"):
                        r = _central(split, mode == "dp", states, init, args.seed)
                    else:
                        r = _federated(dataset, int(mode[3:]), states, init, args.seed, work)
                    results[f"{states}/{start}"] = r | {"seconds": round(time.time() - t, 1)}
                    log.info("%s %s %s/%s: AUROC %.4f", dataset, mode, states, start, r["auroc"])
            out[dataset][mode] = {"settings": results, "loko": leave_one_kind_out(results)}
            (work / "partial.json").write_text(json.dumps(out, indent=2))  # after each mode
    emit(envelope("loko_bench", {k: v for k, v in vars(args).items() if k != "out"}, out,
                  round(time.time() - t0, 1)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
