"""``seqanom serve`` and ``seqanom stream`` end to end: the service started as its own process (and
stopped by its pid), its answers against ``seqanom score`` on the same events, bad input, the
bearer token, metrics, and the live page in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from process_tree import free_port, stop_trees

from seqanom_core.config import ModelConfig, TrainConfig
from seqanom_core.detector import make_detector
from seqanom_core.ingest import write_events
from seqanom_core.schema import BEHAVIORS

CLI = [sys.executable, "-m", "simulation.cli"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def model_and_events(small_split, tmp_path_factory):
    """A small model directory, and test events (canonical file and the same as JSON objects, in
    time order)."""
    train, test, _ = small_split
    root = tmp_path_factory.mktemp("serve")
    det = make_detector("transformer", model_config=ModelConfig(d_model=32, n_layers=1,
                                                                n_heads=2, max_len=32),
                        train_config=TrainConfig(epochs=2, seed=0), progress=False).fit(train)
    det.save(root / "model")
    write_events(test, root / "test.parquet")
    cols = {c: test.column(c).to_pylist() for c in test.column_names}
    rows = sorted(range(test.num_rows), key=lambda i: (cols["timestamp"][i], i))
    events = [{"user_id": cols["user_id"][i], "item_id": cols["item_id"][i],
               "category_id": cols["category_id"][i], "behavior": BEHAVIORS[cols["behavior"][i]],
               "timestamp": cols["timestamp"][i]} for i in rows]
    return root, events


def _call(url: str, method: str = "GET", body: object = None, token: str | None = TOKEN,
          raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as err:
        text, status = err.read().decode(), err.code
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def service(model_and_events):
    root, _ = model_and_events
    (root / "token").write_text(TOKEN + "\n")
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--model", str(root / "model"), "--port", str(port),
                             "--token-file", str(root / "token"), "--max-body-bytes", "200000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"seqanom serve exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                if _call(url + "/healthz", token=None)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("seqanom serve did not answer /healthz within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        stop_trees([proc], timeout=15)


def test_served_scores_equal_batch_scores(service, model_and_events, tmp_path):
    root, events = model_and_events
    for k in range(0, len(events), 300):  # requests of 300 events, in time order
        status, results = _call(service + "/v1/events", "POST", events[k:k + 300])
        assert status == 200, results
        assert [r["user_id"] for r in results] == [str(e["user_id"]) for e in events[k:k + 300]]
    out = tmp_path / "scores.csv"
    subprocess.run([*CLI, "-q", "score", "--model", str(root / "model"), "--data",
                    str(root / "test.parquet"), "--format", "seqanom", "--out", str(out)],
                   check=True, capture_output=True)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) > 50
    for row in rows:
        status, shopper = _call(service + f"/v1/shoppers/{row['user_id']}")
        assert status == 200
        assert shopper["score"] == pytest.approx(float(row["score"]), abs=1e-4)
        assert shopper["flagged"] == (row["flagged"] == "1")
        if shopper["flagged"]:
            assert shopper["top_events"] and shopper["driver_text"]
    status, flagged = _call(service + "/v1/flagged")
    assert status == 200
    assert {s["user_id"] for s in flagged["flagged"]} == \
        {r["user_id"] for r in rows if r["flagged"] == "1"}


def test_bad_requests_are_refused_with_the_reason(service):
    ok = {"user_id": "zz", "item_id": 1, "category_id": 2, "behavior": "view", "timestamp": 1.6e9}
    status, body = _call(service + "/v1/events", "POST", [ok, {**ok, "behavior": "click"}])
    assert status == 422 and body["detail"]["index"] == 1
    assert body["detail"]["field"] == "behavior"
    status, body = _call(service + "/v1/events", "POST", [{k: v for k, v in ok.items()
                                                          if k != "item_id"}])
    assert status == 422 and body["detail"]["field"] == "item_id"
    assert _call(service + "/v1/events", "POST", raw=b"[{")[0] == 422
    assert _call(service + "/v1/events", "POST", raw=b"[" + b" " * 300_000 + b"]")[0] == 413
    assert _call(service + "/v1/events", "POST", [ok], token=None)[0] == 401
    assert _call(service + "/v1/events", "POST", [ok], token="wrong-token-0123456789")[0] == 401
    assert _call(service + "/v1/events", "POST", [ok])[0] == 200
    status, body = _call(service + "/v1/events", "POST", [{**ok, "timestamp": 1.5e9}])
    assert status == 409 and "older" in body["detail"]["message"]
    assert _call(service + "/v1/shoppers/zz")[1]["events"] == 1  # the 409 changed nothing
    assert _call(service + "/v1/shoppers/zz", "DELETE")[0] == 204
    assert _call(service + "/v1/shoppers/zz")[0] == 404


def test_metrics_health_and_schema(service):
    status, text = _call(service + "/metrics")
    assert status == 200
    for series in ("seqanom_events_scored_total", "seqanom_shoppers_held",
                   "seqanom_request_latency_seconds_bucket", 'seqanom_evictions_total{reason="idle"}',
                   "seqanom_shoppers_flagged", 'seqanom_requests_total{code="200"}'):
        assert series in text
    scored = int(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("seqanom_events_scored_total")))
    assert scored > 0
    assert _call(service + "/metrics", token=None)[0] == 401
    status, schema = _call(service + "/openapi.json", token=None)
    assert status == 200 and "/v1/events" in schema["paths"]
    assert _call(service + "/healthz", token=None)[1]["status"] == "ok"


def test_the_live_page_lists_the_flagged_shoppers_in_chromium(service, tmp_path):
    # Chromium is part of the test setup (.ci/run installs Debian's package): its absence fails
    assert CHROMIUM, "chromium is not installed (apt-get install chromium)"
    status, flagged = _call(service + "/v1/flagged")
    expected = [s["user_id"] for s in flagged["flagged"]]
    assert expected, "the test needs flagged shoppers on the page"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=8000", "--dump-dom", f"{service}/#token={TOKEN}"],
        capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert 'class="shopper"' in dom, proc.stderr[-2000:]
    for uid in expected[:10]:
        assert f"<td>{uid}</td>" in dom
    assert f"{len(expected)} flagged of" in dom


def test_stream_scores_ndjson_and_reports_bad_lines(model_and_events):
    root, events = model_and_events
    users = sorted({str(e["user_id"]) for e in events})[:5]
    mine = [e for e in events if str(e["user_id"]) in users]
    lines = [json.dumps(e) for e in mine]
    lines.insert(3, '{"user_id": 1, "behavior": "view"}')
    lines.insert(5, "not json")
    proc = subprocess.run([*CLI, "stream", "--model", str(root / "model")],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["user_id"] for r in out] == [str(e["user_id"]) for e in mine]
    assert "line 4: field 'item_id'" in proc.stderr and "line 6: not a JSON object" in proc.stderr
    assert f"scored {len(mine)} events" in proc.stderr and "rejected 2 lines" in proc.stderr
