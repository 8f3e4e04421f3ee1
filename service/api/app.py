"""The publisher: a Starlette app that validates jobs against the registry and publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio
import redis.exceptions
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from service.api import (
    console,
    dead,
    job_history,
    limiting,
    pausing,
    request_metrics,
    routes,
    scheduling,
)
from service.api.console_session import Keys
from service.api.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    internal_error,
    retry_later,
)
from service.api.fastpath import FastSubmit
from service.api.middleware import ApiKeyAuth, BodyLimit
from service.api.openapi import build_openapi
from service.api.request_tracing import TraceRequests
from service.api.routes import resource
from service.config import constants
from service.config.settings import Settings
from service.history import mongo
from service.history.shipper import on_ttl
from service.jobs.registry import Registry
from service.store.connection import NotReplicated, connect_async, out_of_memory
from service.store.dead_letters import DeadLetters
from service.store.durability import StrictGate
from service.store.limits import Limits
from service.store.publisher import QueueFull, Store, UnknownDependencies
from service.store.schedules import Book
from service.store.waits import Waits
from service.telemetry import tracing

log = logging.getLogger("service.api")


def _later(request: Request, exc: Exception, what: str, code: str, message: str) -> Response:
    """A 503 with Retry-After, logged."""
    log.warning("%s for %s %s: %s", what, request.method, request.url.path, exc)
    return ApiError(503, code, message, headers=retry_later()).response()


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    """Redis down, stalled or loading: 503 with Retry-After, never a 500 or a hang."""
    # A command that timed out on a stalled Redis may still run when it wakes up: only an
    # Idempotency-Key makes the client's retry safe.
    message = (
        "the queue is unavailable; retry later, with an Idempotency-Key: a request that "
        "timed out may still have been enqueued"
    )
    return _later(request, exc, "Redis unavailable", "queue_unavailable", message)


async def redis_refused(request: Request, exc: Exception) -> Response:
    """Redis full (maxmemory with noeviction): 503 `redis_full`. Any other refusal is a bug."""
    assert isinstance(exc, redis.exceptions.ResponseError)
    if not out_of_memory(exc):
        raise exc
    message = "Redis is out of memory (maxmemory); nothing was written, retry later"
    return _later(request, exc, "Redis full", "redis_full", message)


async def not_replicated(request: Request, exc: Exception) -> Response:
    """DURABILITY=replicated and too few replicas confirmed the write in time: 503
    `not_replicated`. The write is on the primary; a retry with the same Idempotency-Key
    returns the same job, once the replicas confirm it."""
    message = (
        "written on the Redis primary but not confirmed by enough replicas (DURABILITY="
        "replicated); retry: a publish with the same Idempotency-Key returns the same job"
    )
    return _later(request, exc, "Not replicated", "not_replicated", message)


async def queue_full(request: Request, exc: Exception) -> Response:
    """MAX_BACKLOG: 429 `queue_full` with Retry-After; nothing was enqueued."""
    assert isinstance(exc, QueueFull)
    details = {"queue": exc.queue, "backlog": exc.backlog, "max_backlog": exc.limit}
    message = f"{exc}: nothing was enqueued, retry later"
    return ApiError(429, "queue_full", message, details, retry_later()).response()


async def unknown_dependencies(request: Request, exc: Exception) -> Response:
    """depends_on names jobs Redis does not hold (never made, or expired): 422, nothing
    enqueued."""
    assert isinstance(exc, UnknownDependencies)
    message = f"depends_on names unknown jobs ({exc}); nothing was enqueued"
    return ApiError(422, "unknown_dependency", message, {"ids": list(exc.ids)}).response()


async def record_history(client: redis.asyncio.Redis, interval: float) -> None:
    """`rq:history:on` for the next few intervals: while it exists, the scripts record every
    job published or canceled, whole, whether a worker runs or not (the events wait in Redis
    for a worker's shipper)."""
    try:
        await client.set(constants.HISTORY_ON_KEY, 1, ex=on_ttl(interval))
    except redis.exceptions.RedisError as exc:  # Redis down: the next refresh will do
        log.debug("job history: Redis unavailable, recording not renewed: %s", exc)


async def keep_recording_history(client: redis.asyncio.Redis, interval: float) -> None:
    """With MONGODB_URI: `record_history` every `interval`, as the shippers do."""
    while True:
        await asyncio.sleep(interval)
        await record_history(client, interval)


# GET /jobs without MONGODB_URI: a 405 (Allow: POST) that says why.
HISTORY_OFF = ("history_disabled", "job history needs MongoDB: set MONGODB_URI to enable GET /jobs")


def create_app(settings: Settings, registry: Registry, waits: Waits | None = None) -> ASGIApp:
    """The API. `waits`: its long-polls, given by a server that releases them on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A Redis connection per request in flight, at most (server.py counts the files).
        client = connect_async(settings.queue_redis, settings.max_connections)
        store = Store(client, settings.max_backlog, settings.retention, settings.replicas)
        app.state.store = store
        app.state.waits.start(client)
        app.state.dead = DeadLetters(client)
        app.state.schedules = Book(client)
        app.state.limits = Limits(client)
        app.state.mongo = (
            mongo.connect_async(settings.mongodb_uri) if settings.mongodb_uri else None
        )
        recording = None
        if settings.mongodb_uri is not None:  # recorded from the first request on
            interval = settings.worker_processing_interval
            await record_history(client, interval)
            recording = asyncio.create_task(keep_recording_history(client, interval))
        log.info(
            "API: %d job types, queue %s on %s",
            len(registry),
            settings.queue_name,
            settings.queue_redis,
        )
        try:
            yield
        finally:
            if recording is not None:
                recording.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recording
            await app.state.waits.close()
            await client.aclose()
            if app.state.mongo is not None:
                await app.state.mongo.client.close()

    history_on = settings.mongodb_uri is not None
    table = [
        resource(
            "/jobs",
            {"POST": routes.submit_job, **({"GET": job_history.list_jobs} if history_on else {})},
            {} if history_on else {"GET": HISTORY_OFF, "HEAD": HISTORY_OFF},
        ),
        resource("/jobs/batch", {"POST": routes.submit_batch}),
        # DELETE is the older spelling of cancel (deprecated): it keeps the job, as no DELETE
        # should.
        resource("/jobs/{job_id}", {"GET": routes.get_job, "DELETE": routes.cancel_job}),
        resource("/jobs/{job_id}/cancel", {"POST": routes.cancel_job}),
        resource("/queues", {"GET": routes.list_queues}),
        *pausing.routes,
        resource("/health", {"GET": routes.health}),
        resource("/backlog", {"GET": routes.backlog}),
        resource("/ready", {"GET": routes.ready}),
        resource("/openapi.json", {"GET": routes.openapi}),
        resource("/metrics", {"GET": request_metrics.metrics}),
        *dead.routes,
        *scheduling.routes,
        *console.routes,
        *limiting.routes,
    ]
    app = Starlette(
        routes=table,
        exception_handlers={
            Exception: internal_error,  # anything unexpected: a generic 500, logged by uvicorn
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            redis.exceptions.ConnectionError: redis_unavailable,
            redis.exceptions.TimeoutError: redis_unavailable,
            redis.exceptions.BusyLoadingError: redis_unavailable,
            redis.exceptions.ResponseError: redis_refused,
            NotReplicated: not_replicated,
            QueueFull: queue_full,
            UnknownDependencies: unknown_dependencies,
        },
        lifespan=lifespan,
    )
    # No redirect from `/health/` to `/health`: Starlette builds it from the Host header, so
    # any client could have the API answer with a Location of its choosing. A path not
    # listed in the OpenAPI document is a 404.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.strict = StrictGate() if settings.durability == "strict" else None
    app.state.not_ready = {}  # what /ready last logged, by component
    app.state.registry = registry
    app.state.waits = waits or Waits(settings.queue_redis)
    app.state.keys = Keys.of(settings)
    app.state.openapi = build_openapi(
        registry,
        auth=bool(settings.api_keys),
        history_on=history_on,
        max_result_ttl=settings.max_result_ttl,
        max_failure_ttl=settings.max_failure_ttl,
    )
    # The body limits wrap the rest, so an early answer (a 401 too) closes a connection whose
    # body was never read.
    auth = ApiKeyAuth(app, app.state.keys, settings.openapi_public)
    limits = BodyLimit(auth, settings.max_body_bytes, settings.request_body_timeout)
    measured = request_metrics.RequestMetrics(limits, table)
    # Plain POST /jobs requests skip the layers above (with the same checks); the rest pass.
    served = FastSubmit(measured, app, auth, limits)
    # Outermost, so a request refused by the key check or the body limit is traced too.
    return TraceRequests(served) if tracing.enabled() else served
