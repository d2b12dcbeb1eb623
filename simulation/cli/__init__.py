"""The ``seqanom`` console command, the top layer: it gathers every layer's commands.

``main`` builds the parser from ``detector_commands`` (train, score, ledger), ``research_commands``
(inject, split, synth, demo, simulate), ``central_commands`` (credentials, superlink, connection,
rounds) and ``site_commands`` (supernode); ``flower_launch`` holds what the two deployment modules
share. Only this package prints; the library logs. It sits in ``simulation/`` because that is the
highest of the project's fixed folders: nothing below imports it (tests/test_architecture.py).
"""

from simulation.cli.main import build_parser, configure_logging, console_main, main

__all__ = ["build_parser", "configure_logging", "console_main", "main"]
