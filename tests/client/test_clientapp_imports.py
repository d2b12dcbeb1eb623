"""A deployed site starts a fresh ClientApp process for every message, so what ``client.app``
imports is paid on every message: it must not pull in libraries only the server or a labelled
run needs (measured 2026-12-07: sklearn.isotonic cost 1.3 s of a 3.0 CPU-second import, pandas
0.25 s)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_clientapp_import_leaves_out_server_only_libraries():
    code = ("import sys, client.app; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'pandas',"
            " 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "[]", f"client.app imports {out}"
