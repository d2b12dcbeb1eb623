"""The seqanom ServerApp: builds the strategy and runs the guarded round loop (thin adapter).

Run config keys are listed in ``seqanom_core.federation.run_config`` (defaults in pyproject.toml's
``[tool.flwr.app.config]``). The final global model goes to ``final-model-dir``, by default
``<checkpoint-dir>/final``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from seqanom_core.federation.run_config import settings_from_run_config
from server.federated_run import FederatedRun
from server.strategies import build_strategy

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation; raises (non-zero exit) when a round gets no usable replies.

    A planned stop (every site's budget spent, or the central-DP budget spent) returns normally
    after keeping the checkpoints and the final model of the last completed round.
    """
    settings = settings_from_run_config(dict(context.run_config))
    strategy = build_strategy(settings.federation, settings.privacy)
    final = settings.federation.final_model_dir
    run = FederatedRun(grid, strategy, settings, run_id=str(context.run_id),
                       final_model_dir=Path(final) if final else None)
    records = run.run()
    log.info("federated run %s finished: %d rounds (privacy-mode %s)%s", context.run_id,
             len(records), settings.privacy.mode,
             f"; stopped early: {run.stop_reason}" if run.stop_reason else "")
