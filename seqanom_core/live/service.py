"""``seqanom serve``'s HTTP service: live scoring over an ASGI app (Starlette via FastAPI, run by
uvicorn).

Endpoints (JSON; the schema at ``/openapi.json``):

- ``POST /v1/events``: a JSON array of events; one result per event (``user_id``, ``surprise``,
  ``score``, ``flagged``, ``driver``). 422 names the bad event's index and field; 413 for a body
  over ``max_body_bytes``; 409 when an event is older than its shopper's last one (nothing of
  that request is applied: a site re-sends it in order).
- ``GET /v1/shoppers/{user_id}``: the shopper's score, flag and explanation; ``DELETE`` forgets
  the shopper; ``GET /v1/flagged``: the flagged shoppers, highest score first.
- ``GET /healthz``; ``GET /metrics`` (Prometheus text format); ``GET /``: the live page.

Requests from concurrent clients are scored together: a single worker thread takes every request
waiting, checks each one's time order, and scores all accepted events in one model pass. The
same thread answers the shopper queries, so the state is only ever touched by it. With a token,
every ``/v1`` call and ``/metrics`` need ``Authorization: Bearer TOKEN`` (401 otherwise); ``/`` and
``/healthz`` are open (the page sends the token it is given after ``#token=`` in its address).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from seqanom_core.live.engine import LiveScorer
from seqanom_core.live.events import EventError, LiveEvent, OutOfOrderError, parse_events
from seqanom_core.live.page import PAGE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # default request size limit: about 5,000 events
MAX_BATCH_EVENTS = 4096  # events scored together at most (more requests wait for the next pass)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EventIn(BaseModel):
    """One event in the canonical schema (documentation of the body; checked by parse_events)."""

    user_id: str | int
    item_id: str | int
    category_id: str | int
    behavior: str = Field(description="view, cart, fav or buy")
    timestamp: float = Field(description="Unix seconds")


class EventScore(BaseModel):
    """The shopper's state just after one event."""

    user_id: str
    surprise: float = Field(description="the event's negative log-likelihood (nats, all channels)")
    score: float = Field(description="the shopper's anomaly score after this event")
    flagged: bool = Field(description="score above the model's calibrated threshold")
    driver: str = Field(description="the statistic behind the score (channel:statistic)")


@dataclass
class Metrics:
    """Counters for ``/metrics`` (Prometheus text format, written here: a handful of series)."""

    requests: dict[str, int] = field(default_factory=dict)  # by status code
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    flagged_events: int = 0

    def observe(self, status: int, seconds: float) -> None:
        """Count one ``POST /v1/events`` and its latency."""
        self.requests[str(status)] = self.requests.get(str(status), 0) + 1
        k = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
        self.latency_counts[k] += 1
        self.latency_sum += seconds

    def text(self, scorer: LiveScorer, flagged_now: int) -> str:
        """The exposition text."""
        c = scorer.counters
        lines = [
            "# HELP seqanom_events_scored_total Events scored.",
            "# TYPE seqanom_events_scored_total counter",
            f"seqanom_events_scored_total {c['events']}",
            "# HELP seqanom_events_flagged_total Events after which their shopper was flagged.",
            "# TYPE seqanom_events_flagged_total counter",
            f"seqanom_events_flagged_total {self.flagged_events}",
            "# HELP seqanom_shoppers_held Shoppers whose state is held.",
            "# TYPE seqanom_shoppers_held gauge",
            f"seqanom_shoppers_held {len(scorer.shoppers)}",
            "# HELP seqanom_shoppers_flagged Shoppers held whose current score is flagged.",
            "# TYPE seqanom_shoppers_flagged gauge",
            f"seqanom_shoppers_flagged {flagged_now}",
            "# HELP seqanom_evictions_total Shoppers forgotten to bound memory, by reason.",
            "# TYPE seqanom_evictions_total counter",
            f'seqanom_evictions_total{{reason="max_shoppers"}} {c["evicted_lru"]}',
            f'seqanom_evictions_total{{reason="idle"}} {c["evicted_idle"]}',
            "# HELP seqanom_forgotten_total Shoppers forgotten on request (DELETE).",
            "# TYPE seqanom_forgotten_total counter",
            f"seqanom_forgotten_total {c['forgotten']}",
            "# HELP seqanom_requests_total POST /v1/events requests, by status code.",
            "# TYPE seqanom_requests_total counter",
            *(f'seqanom_requests_total{{code="{k}"}} {v}' for k, v in sorted(self.requests.items())),
            "# HELP seqanom_request_latency_seconds Time to answer POST /v1/events.",
            "# TYPE seqanom_request_latency_seconds histogram",
        ]
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
            total += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'seqanom_request_latency_seconds_bucket{{le="{le}"}} {total}')
        lines += [f"seqanom_request_latency_seconds_sum {self.latency_sum:.6f}",
                  f"seqanom_request_latency_seconds_count {total}"]
        return "\n".join(lines) + "\n"


class _Batcher:
    """Scores the events of every waiting request in one pass on one worker thread."""

    def __init__(self, scorer: LiveScorer) -> None:
        self.scorer = scorer
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqanom-score")
        self.queue: asyncio.Queue[tuple[list[LiveEvent], asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def run_in_worker(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the scoring thread (the only thread that touches the state)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, events: list[LiveEvent]) -> list[dict[str, Any]]:
        """Results of ``events``, scored with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((events, future))
        return await future

    async def loop(self) -> None:
        """Take every waiting request (up to MAX_BATCH_EVENTS events), score, answer; repeat."""
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0][0])
            while not self.queue.empty() and size < MAX_BATCH_EVENTS:
                batch.append(self.queue.get_nowait())
                size += len(batch[-1][0])
            try:
                outcomes = await self.run_in_worker(self._score, [b[0] for b in batch])
            except Exception as err:  # the model failed: every waiting request learns it
                outcomes = [err] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _score(self, requests: list[list[LiveEvent]]) -> list[Any]:
        """Check each request's time order (against the state and the requests before it),
        then score every accepted event in one pass."""
        pending: dict[str, float] = {}
        accepted: list[int] = []
        outcomes: list[Any] = [None] * len(requests)
        for k, events in enumerate(requests):
            trial = dict(pending)
            try:
                self.scorer.check_order(events, trial)
            except OutOfOrderError as err:
                outcomes[k] = err
                continue
            pending = trial
            accepted.append(k)
        flat = [e for k in accepted for e in requests[k]]
        results = self.scorer.score(flat) if flat else []
        at = 0
        for k in accepted:
            outcomes[k] = results[at:at + len(requests[k])]
            at += len(requests[k])
        return outcomes


def create_app(scorer: LiveScorer, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, model_name: str = "") -> FastAPI:
    """The ASGI app over ``scorer`` (see the module docstring)."""
    metrics = Metrics()
    batcher = _Batcher(scorer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.task = asyncio.create_task(batcher.loop())
        sweeper = asyncio.create_task(_sweep(batcher, scorer))
        try:
            yield
        finally:
            batcher.task.cancel()
            sweeper.cancel()
            batcher.executor.shutdown(wait=True)

    app = FastAPI(title="seqanom live scoring", version="1", lifespan=lifespan,
                  description="Scores each shopper's events as they arrive, with the answers "
                              "of batch `seqanom score` on the same events.")

    def authorise(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/events", response_model=list[EventScore],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}}}}}},
              responses={409: {"description": "an event older than its shopper's last one"},
                         413: {"description": "body over the size limit"},
                         422: {"description": "a malformed event (its index and field named)"}})
    async def post_events(request: Request) -> Any:
        """Score a JSON array of events (each shopper's in time order)."""
        t0 = time.perf_counter()
        status = 200
        try:
            authorise(request)
            body = await _read_limited(request, max_body_bytes)
            try:
                raw = json.loads(body)
            except ValueError as err:
                raise HTTPException(422, f"the body is not JSON: {err}") from err
            try:
                events = parse_events(raw)
            except EventError as err:
                raise HTTPException(422, {"index": err.index, "field": err.field,
                                          "message": str(err)}) from err
            try:
                results = await batcher.submit(events)
            except OutOfOrderError as err:
                raise HTTPException(409, {"index": err.index, "field": err.field,
                                          "message": str(err)}) from err
            metrics.flagged_events += sum(r["flagged"] for r in results)
            return JSONResponse(results)  # already plain JSON values: no model validation
        except HTTPException as err:
            status = err.status_code
            raise
        finally:
            metrics.observe(status, time.perf_counter() - t0)

    @app.get("/v1/shoppers/{user_id}")
    async def get_shopper(user_id: str, request: Request) -> Any:
        """The shopper's current score, flag and explanation (top events, expected vs observed)."""
        authorise(request)
        found = await batcher.run_in_worker(scorer.shopper, user_id)
        if found is None:
            raise HTTPException(404, f"shopper {user_id!r} is not held (never seen, forgotten or "
                                     "evicted)")
        return found

    @app.delete("/v1/shoppers/{user_id}", status_code=204)
    async def delete_shopper(user_id: str, request: Request) -> Response:
        """Forget a shopper's state."""
        authorise(request)
        if not await batcher.run_in_worker(scorer.forget, user_id):
            raise HTTPException(404, f"shopper {user_id!r} is not held")
        return Response(status_code=204)

    @app.get("/v1/flagged")
    async def flagged(request: Request, limit: int = 50) -> Any:
        """The flagged shoppers held, highest score first, with their explanations."""
        authorise(request)

        def collect() -> list[dict[str, Any]]:
            ids = scorer.flagged_shoppers()
            rows = [scorer.shopper(u) for u in ids]
            rows.sort(key=lambda r: -r["score"])
            return rows[:max(0, int(limit))]

        return {"threshold": scorer.threshold, "shoppers_held": len(scorer.shoppers),
                "flagged": await batcher.run_in_worker(collect)}

    @app.get("/healthz")
    async def healthz() -> Any:
        """Liveness: the model is loaded and the scoring thread answers."""
        held = await batcher.run_in_worker(lambda: len(scorer.shoppers))
        return {"status": "ok", "model": model_name, "shoppers_held": held}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format."""
        authorise(request)
        flagged_now = await batcher.run_in_worker(lambda: len(scorer.flagged_shoppers()))
        return PlainTextResponse(metrics.text(scorer, flagged_now),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return app


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is over the limit of {limit} bytes: send fewer events "
                              "per request")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _sweep(batcher: _Batcher, scorer: LiveScorer) -> None:
    """Forget idle shoppers even while no events arrive."""
    if scorer.idle_ttl is None:
        return
    while True:
        await asyncio.sleep(max(1.0, scorer.idle_ttl / 4))
        await batcher.run_in_worker(scorer.evict_idle)
