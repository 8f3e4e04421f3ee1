"""The API's Prometheus metrics: requests, accepted and rejected jobs, publish latency, backlog.

One uvicorn process, so prometheus_client's default in-process registry. GET /metrics needs a
key when API_KEYS is set (job types and queue names are in it; service/api/middleware.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import queues
from service.jobs import records
from service.telemetry.gauges import (
    CONTENT_TYPE,
    BacklogCollector,
    BacklogPlan,
    child,
    exposition,
    read_backlog_async,
)

REQUESTS = Counter("service_http_requests", "HTTP requests answered", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "service_http_request_duration_seconds", "HTTP request handling time", ["route", "method"]
)
ACCEPTED = Counter("service_jobs_accepted", "Jobs accepted (202)", ["type", "priority"])
REJECTED = Counter(
    "service_jobs_rejected",
    "Job submissions refused (auth, validation, content_type, size, timeout, backpressure, "
    "redis_down)",
    ["reason"],
)
PUBLISH_SECONDS = Histogram(
    "service_publish_duration_seconds",
    "Time to publish a request's jobs to Redis",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BACKLOG = BacklogCollector()
REGISTRY.register(BACKLOG)

SUBMIT_ROUTES = ("/jobs", "/jobs/batch")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REJECTION_REASONS = {
    400: "validation",
    401: "auth",
    408: "timeout",  # a body slower than REQUEST_BODY_TIMEOUT
    413: "size",
    415: "content_type",
    422: "validation",
    429: "backpressure",
    503: "redis_down",
}


def accepted(batch: Sequence[records.NewJob]) -> None:
    for job in batch:
        child(ACCEPTED, job.type, queues.priority(job.queue)).inc()


async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if BACKLOG.stale(settings.worker_processing_interval):
        bases = request.app.state.registry.queues(settings.queue_name)
        try:
            BACKLOG.latest = await read_backlog_async(
                request.app.state.store.client, BacklogPlan(bases)
            )
        except Exception:  # noqa: BLE001 - Redis down: the other metrics still answer
            BACKLOG.latest = None
    return Response(exposition(REGISTRY), media_type=CONTENT_TYPE)


def answered(route: str, method: str, status: int, seconds: float) -> None:
    """One request answered: its count and duration, and the refusal of a job submission."""
    child(REQUEST_SECONDS, route, method).observe(seconds)
    child(REQUESTS, route, method, str(status)).inc()
    if route in SUBMIT_ROUTES and method == "POST" and status in REJECTION_REASONS:
        child(REJECTED, REJECTION_REASONS[status]).inc()


class RequestMetrics:
    """Counts every request by route template (never the raw path: ids would make the label
    set unbounded) and status, and job submissions refused, by reason. Outermost middleware,
    so it also sees the 401s and 413s answered before routing."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self.templates = {
            getattr(route, "endpoint", None): getattr(route, "path", "") for route in routes
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"  # bounded
            answered(self._route(scope), method, status, time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        template = self.templates.get(scope.get("endpoint"))
        if template:
            return template
        for route in self.routes:  # answered before routing (401, 413): match it ourselves
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", "unmatched")
        return "unmatched"
