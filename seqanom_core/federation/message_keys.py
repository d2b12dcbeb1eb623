"""Names of what travels between a site and the aggregator (one place for both sides).

A site's replies hold only model arrays (``ARRAYS``), calibration histograms (``HISTOGRAMS``:
counts over fixed bins, with noise) and the scalar metrics named in ``SITE_METRICS``. The
message audit test checks every reply against this list.
"""

from __future__ import annotations

ARRAYS = "arrays"  # global model in, local model out (train)
HISTOGRAMS = "histograms"  # noisy calibration histograms (evaluate, score-summary)
CONFIG = "config"  # round settings from the server
METRICS = "metrics"  # scalar metrics from the site
SITE = "site"  # the site's name (a ConfigRecord with one string)

SCORE_SUMMARY = "score_summary"  # query action: noisy score histogram for the threshold

# keys of the round config (server -> site)
SERVER_ROUND = "server-round"
ROUNDS_LEFT = "rounds-left"
RUN_ID = "run-id"
PROXIMAL_MU = "proximal-mu"
CALIBRATOR = "calibrator"  # JSON of the federated ScoreCalibrator (score-summary)
ARRAY_NAMES = "array-names"  # JSON list: names of the arrays in a SecAgg+ (legacy) fit message

# scalar metrics a site may send (site -> server)
SITE_METRICS = frozenset({
    "num-examples", "declined", "train-loss", "epsilon", "delta", "noise-multiplier", "budget",
    "loss", "accuracy", "site-threshold", "auroc", "auprc", "num-test", "alert-rate-test",
    "secagg-weight", "secagg-clipped",
})
SITE_NAME = "site"  # SecAgg+ (legacy) fit results carry the site's name among their metrics
STAT_HIST, SCORE_HIST = "stat-histograms", "score-histogram"
