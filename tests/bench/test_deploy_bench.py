"""The deployment benchmark: its message timing from SuperNode logs, and a real small run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from process_tree import run_in_group

from bench.deploy_bench import message_seconds

REPO = Path(__file__).resolve().parents[2]

LOG = """\
10.000 INFO :      Receiving: train message (ID: 1)
14.500 INFO :      Sending: train message (ID: 2)
20.000 INFO :      Receiving: evaluate message (ID: 3)
21.000 INFO :      Sending: evaluate message (ID: 4)
"""


def test_message_seconds_pairs_each_receipt_with_its_reply_per_kind():
    other = LOG.replace("14.500", "16.500")
    assert message_seconds([LOG, other]) == {"evaluate": 1.0, "train": 5.5}
    assert message_seconds(["10.0 INFO : Receiving: train message (ID: 1)\n"]) == {}


@pytest.mark.slow
def test_small_run_times_simulated_and_deployed_rounds(tmp_path):
    work, out = tmp_path / "work", tmp_path / "result.json"
    work.mkdir()
    run_in_group([sys.executable, "-m", "bench.deploy_bench", "--sites", "2", "--shoppers", "160",
                  "--rounds", "1", "--starts", "warm", "--tmp-dir", str(work), "--out", str(out)],
                 timeout=900, cwd=REPO)
    res = json.loads(out.read_text())["results"]
    assert len(res["simulated"]["rounds_s"]) == 1 and len(res["deployed_warm"]["rounds_s"]) == 1
    assert res["deployed_warm"]["ratio"] > 0 and "train" in res["deployed_warm"]["message_s"]
    assert list(work.iterdir()) == []  # the bench removed its files
