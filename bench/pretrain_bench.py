"""Pretraining's effect on a federated DP run (issue 19): the same ``seqanom simulate`` from
scratch and from a pretrained model, per seed, and the message size of each fine-tuning mode.

1. ``seqanom pretrain --data P [--data P ...] --format F --size tiny --max-len 64`` (simulate's
   model shape, so that both arms train the same architecture), no DP; or, with
   ``--pretrained MODEL`` (``builtin``: the model that ships with seqanom), that model.
2. Per seed and arm, ``seqanom simulate --data D --format F --sites K --no-baselines --seed S``
   (DP, epsilon 8 per site, delta 1e-5) in its own process: ``scratch``, and
   ``pretrained-<mode>`` (``--pretrained DIR --finetune MODE``) for each ``--modes``.
   The run's partition, injected anomalies and test shoppers depend on the seed only, so the
   arms of a seed see the same data.
Reported per run: federated AUROC, AUPRC, recall at FPR 0.1/0.2/1%, AUROC per kind, the worst
site's epsilon, the bytes of model arrays in each training message, seconds; per arm the mean
and spread over seeds, and per seed the pretrained-minus-scratch AUROC.

    python -m bench.pretrain_bench (--pretrain-data A.csv.gz [--pretrain-data B ...]
        --pretrain-format F | --pretrained MODEL) --data D.csv.gz --format F [--sites 4] [--seeds 0 1 2]
        [--modes all adapters] [--epochs 4] [--out JSON]
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

log = logging.getLogger("bench.pretrain")


def _run_summary(out: Path) -> dict[str, Any]:
    """What one simulate run measured (metrics.json, the last round record)."""
    metrics = json.loads((out / "metrics.json").read_text())
    fed = metrics["evaluation"]["federated"]
    rounds = [json.loads(line) for line in
              (out / "checkpoints" / "metrics.jsonl").read_text().splitlines() if line]
    return {**detection_summary(evaluation=fed),
            "epsilon": round(metrics["methods"]["federated"]["epsilon"], 3),
            "message_model_bytes": rounds[-1].get("message_model_bytes"),
            "seconds": metrics["methods"]["federated"]["seconds"]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (or write) its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrain-data", action="append")
    src.add_argument("--pretrained", help="a pretrained model directory, or builtin")
    p.add_argument("--pretrain-format", default="taobao")
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="taobao")
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=["all", "adapters"])
    p.add_argument("--epochs", type=int, default=4, help="pretraining epochs")
    p.add_argument("--work", help="directory for the runs (default: a temporary one)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    setup_logging()
    t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="pretrain-bench-"))
    pre = args.pretrained or work / "pretrained"
    t = time.time()
    if args.pretrain_data:
        run_seqanom("pretrain", *[x for d in args.pretrain_data for x in ("--data", d)],
                    "--format", args.pretrain_format, "--size", "tiny", "--max-len", "64",
                    "--epochs", str(args.epochs), "--out", str(pre))
    pretrain_s = round(time.time() - t, 1)
    arms = {"scratch": ["--pretrained", "none"]} | {f"pretrained-{m}": ["--pretrained", str(pre), "--finetune", m]
                              for m in args.modes}
    runs: dict[str, dict[str, Any]] = {a: {} for a in arms}
    for seed in args.seeds:
        for arm, extra in arms.items():
            out = work / f"{arm}-seed{seed}"
            run_seqanom("simulate", "--data", args.data, "--format", args.format, "--sites",
                        str(args.sites), "--no-baselines", "--seed", str(seed), "--out",
                        str(out), *extra)
            runs[arm][str(seed)] = _run_summary(out)
            log.info("%s seed %d: AUROC %.4f", arm, seed, runs[arm][str(seed)]["auroc"])
    summary = {}
    for arm, by_seed in runs.items():
        aurocs = [r["auroc"] for r in by_seed.values()]
        summary[arm] = {"auroc_mean": round(float(np.mean(aurocs)), 4),
                        "auroc_min": min(aurocs), "auroc_max": max(aurocs),
                        "message_model_bytes": next(iter(by_seed.values()))["message_model_bytes"]}
        if arm != "scratch":
            summary[arm]["auroc_gain_per_seed"] = [
                round(by_seed[s]["auroc"] - runs["scratch"][s]["auroc"], 4) for s in by_seed]
    params = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    emit(envelope("pretrain_bench", params, {"pretrain_s": pretrain_s, "summary": summary,
                                             "runs": runs}, round(time.time() - t0, 1)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
