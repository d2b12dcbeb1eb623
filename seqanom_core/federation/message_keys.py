"""Names of what travels between a site and the aggregator (one place for both sides).

What a site may send under each name, and how it is protected: ``releases``.
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

SITE_NAME = "site"  # SecAgg+ (legacy) fit results carry the site's name among their metrics
STAT_HIST, SCORE_HIST = "stat-histograms", "score-histogram"
