"""``python -m simulation.cli``: the ``seqanom`` command."""

from simulation.cli.main import console_main

console_main()
