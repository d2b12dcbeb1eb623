"""What accounting the calibration costs: test AUROC and alert rate of a federated model under
the exact pooled calibration, against the accounted noisy federated calibration at several
budget shares (prints JSON).

The model and the sites come from a finished ``seqanom simulate`` run directory (its last
checkpoint, ``sites/site-k/``). Each site's validation shoppers are its id-keyed 20% (as the
sites split them), "all" adds its training shoppers (``calibration-shoppers``); the noise is
what ``calibration_budget`` plans for the share, the budget and the delta given; the pooled
totals are the exact counts here (the server estimates them from the noisy training counts). Usage::

    python bench/calibration_budget_bench.py RUN_DIR [--budget 8] [--shares 0.1 0.25 0.5]
        [--every 0] [--draws 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from seqanom_core.detector import SequenceDetector
from seqanom_core.federation.calibration_budget import calibration_noise, planned_releases
from seqanom_core.federation.calibration_histograms import score_histogram, stat_histograms
from seqanom_core.federation.pooled_calibration import pooled_calibrator, pooled_threshold
from seqanom_core.federation.run_config import FederationConfig
from seqanom_core.federation.site_round import SitePaths, load_site
from seqanom_core.metrics import auroc
from seqanom_core.models import resolve_device
from seqanom_core.scoring import ScoreCalibrator, score_statistics
from seqanom_core.thresholds import calibrate_threshold


def _site_stats(run: Path, det: SequenceDetector) -> list[dict[str, np.ndarray]]:
    """Per site: validation statistics, test statistics and test labels."""
    device = resolve_device("cpu")
    out = []
    for d in sorted((run / "sites").iterdir()):
        site = load_site(SitePaths(d.name, d / "train.parquet", "seqanom", d / "test.parquet",
                                   d / "labels.csv"), det.tokenizer_config, 0.2, 0)
        out.append({"valid": score_statistics(det.network_, site.valid, device)[1],
                    "train": score_statistics(det.network_, site.train, device)[1],
                    "test": score_statistics(det.network_, site.test, device)[1],
                    "labels": np.asarray(site.test_labels)})
    return out


def _measure(sites: list[dict[str, np.ndarray]], calibrator: ScoreCalibrator,
             threshold: float) -> dict[str, float]:
    scores = np.concatenate([calibrator.score(s["test"])[0] for s in sites])
    labels = np.concatenate([s["labels"] for s in sites])
    return {"auroc": auroc(labels, scores),
            "alert_rate_normal": float(np.mean(scores[labels == 0] > threshold))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--every", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--alert-rate", type=float, default=0.05)
    ap.add_argument("--draws", type=int, default=10)
    args = ap.parse_args(argv)
    t0 = time.time()
    ckpts = sorted((args.run / "checkpoints").glob("round-*"))
    det = SequenceDetector.load(ckpts[-1], device="cpu", progress=False)
    sites = _site_stats(args.run, det)
    for s in sites:
        s["all"] = np.concatenate([s["valid"], s["train"]])
    out: dict = {"run": str(args.run), "budget": args.budget, "delta": args.delta,
                 "validation_shoppers": [len(s["valid"]) for s in sites],
                 "all_shoppers": [len(s["all"]) for s in sites], "exact": {}, "noisy": []}
    for part in ("valid", "all"):
        cal = ScoreCalibrator().fit(np.concatenate([s[part] for s in sites]))
        thr = calibrate_threshold(np.concatenate([cal.score(s[part])[0] for s in sites]),
                                  args.alert_rate)
        out["exact"][part] = _measure(sites, cal, thr)
    fed0 = FederationConfig(num_rounds=args.rounds, calibration_every=args.every,
                            alert_rate=args.alert_rate)
    settings = [("unaccounted noise 0.5", fed0, None, "valid")]
    for share in args.shares:
        fed = dataclasses.replace(fed0, calibration_share=share)
        settings += [(f"share {share}", fed, args.budget, part) for part in ("valid", "all")]
    for name, fed, budget, part in settings:
        noise = calibration_noise(fed, budget, args.delta)
        runs = []
        for draw in range(args.draws):
            rng = np.random.SeedSequence([draw, 7]).generate_state(2 * len(sites))
            total = float(sum(len(s[part]) for s in sites))
            cal = pooled_calibrator([stat_histograms(s[part], noise.stat_std, int(rng[k]))
                                     for k, s in enumerate(sites)], total)
            hists = [score_histogram(cal.score(s[part])[0], noise.score_std,
                                     int(rng[len(sites) + k])) for k, s in enumerate(sites)]
            try:
                thr = pooled_threshold(hists, [noise.score_std] * len(sites),
                                       args.alert_rate, total).threshold
            except ValueError:
                thr = float("inf")
            runs.append(_measure(sites, cal, thr))
        out["noisy"].append({
            "setting": name, "shoppers": part, "releases": planned_releases(fed),
            "noise_multiplier": noise.noise_multiplier, "stat_std": noise.stat_std,
            "score_std": noise.score_std,
            "auroc_mean": float(np.mean([r["auroc"] for r in runs])),
            "auroc_std": float(np.std([r["auroc"] for r in runs])),
            "alert_rate_normal_mean": float(np.mean([r["alert_rate_normal"] for r in runs])),
            "alert_rate_normal_std": float(np.std([r["alert_rate_normal"] for r in runs]))})
    out["seconds"] = round(time.time() - t0, 1)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
