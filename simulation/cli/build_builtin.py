"""Rebuild the pretrained model that ships with seqanom (``builtin``, seqanom_core/builtin_model.py):
the recipe, as one command.

    python -m simulation.cli.build_builtin [--item-states basic|funnel] [--out PATH]

It runs ``seqanom pretrain --synthetic 2500 --synthetic-seed 101 --size tiny --max-len 64
--epochs 4`` (the built-in generator: no real shopper; about 20 s on 2 CPU cores) and packs the
model directory into ``seqanom_core/pretrained/builtin.json``. Its weights depend on the torch
build and the machine, so a rebuilt file has another digest: runs started from the old one are
resumed with the old file.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from seqanom_core.builtin_model import BUILTIN_FILE, pack
from seqanom_core.config import ITEM_STATES

RECIPE = ["--synthetic", "2500", "--synthetic-seed", "101", "--size", "tiny", "--max-len", "64",
          "--epochs", "4", "--seed", "0"]


def main(argv: list[str] | None = None) -> int:
    """Pretrain with ``RECIPE`` and pack the model; prints where and its digest."""
    from seqanom_core.federation.global_model import pretrained_digest
    from simulation.cli.main import main as seqanom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--item-states", choices=ITEM_STATES, default="basic")
    p.add_argument("--out", default=str(BUILTIN_FILE))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        code = seqanom(["pretrain", *RECIPE, "--item-states", args.item_states, "--out",
                        str(model)])
        if code:
            return code
        out = pack(model, args.out)
        print(f"packed to {out} ({out.stat().st_size:,} bytes); weights digest "
              f"{pretrained_digest(str(model))[:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
