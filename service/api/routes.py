"""The HTTP endpoints. Each validates, makes one Redis round trip, and answers."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import Receive, Scope, Send

from service.api import dependencies, job_history, params, request_metrics
from service.api.errors import ApiError, JSONResponse, Problems, clip, retry_later
from service.api.submit import IDEMPOTENCY_KEY, parse_jobs, read_json
from service.config import constants, queues
from service.config.settings import Settings
from service.history import mongo
from service.jobs import records
from service.jobs.registry import Registry
from service.store.publisher import Store
from service.store.waits import FINAL

log = logging.getLogger("service.api")

Endpoint = Callable[[Request], Awaitable[Response]]
# The order methods are listed in an Allow header.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class Resource:
    """Every method of one path (HEAD too where GET is), as one ASGI app: any other method is
    a 405 whose Allow lists them all. A route with no methods of its own takes every method,
    so the first path to match a URL answers it whatever the method: `GET /jobs/batch` is a
    405, never a lookup of a job called `batch`. `refused`: by method, the code and message
    of that 405 when the method is missing for a reason."""

    def __init__(
        self, handlers: Mapping[str, Endpoint], refused: Mapping[str, tuple[str, str]] = {}
    ) -> None:
        served = dict(handlers)
        if "GET" in served:
            served.setdefault("HEAD", served["GET"])
        self.apps = {method: request_response(handler) for method, handler in served.items()}
        self.allow = ", ".join(method for method in _METHODS if method in served)
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.apps.get(scope["method"])
        if app is None:
            code, message = self.refused.get(scope["method"]) or (
                "method_not_allowed",
                f"{scope['method']} is not allowed; allowed: {self.allow}",
            )
            raise ApiError(405, code, message, headers={"Allow": self.allow})
        await app(scope, receive, send)


def resource(
    path: str, handlers: Mapping[str, Endpoint], refused: Mapping[str, tuple[str, str]] = {}
) -> Route:
    """The route of `path`, served by `handlers` by method (see `Resource`)."""
    return Route(path, Resource(handlers, refused), name=path)


def _state(request: Request) -> tuple[Settings, Registry, Store]:
    state = request.app.state
    return state.settings, state.registry, state.store


def accepted(job: records.NewJob, status: str | None = None) -> dict[str, Any]:
    """The 202's view of a published job. `status`: what a job with parents became (deferred;
    queued or scheduled if they had all finished; canceled if one had failed for good), read
    back by `answers`."""
    accepted = {"id": job.id, "type": job.type, "queue": job.queue}
    if job.depends_on:
        view = {**accepted, "status": status or "deferred", "depends_on": list(job.depends_on)}
        return view if job.run_at is None else {**view, "run_at": records.utc_iso(job.run_at)}
    if job.run_at is None:
        return {**accepted, "status": "queued"}
    return {**accepted, "status": "scheduled", "run_at": records.utc_iso(job.run_at)}


async def answers(store: Store, jobs: list[records.NewJob]) -> list[dict[str, Any]]:
    """The 202's views of published jobs: those with parents read back (one round trip for
    all of them; none for a batch without any), since the publish decided their state."""
    waiting = [job.id for job in jobs if job.depends_on]
    decided = dict(zip(waiting, await store.statuses(waiting), strict=True)) if waiting else {}
    return [accepted(job, decided.get(job.id)) for job in jobs]


async def _ensure_durable(request: Request) -> None:
    """DURABILITY=strict: accept jobs only while Redis is configured not to lose them."""
    gate = request.app.state.strict
    if gate is not None and (problems := await gate.check(request.app.state.store.client)):
        raise ApiError(
            503,
            "redis_not_durable",
            "Redis is not configured to keep accepted jobs (DURABILITY=strict); nothing was "
            "enqueued: " + "; ".join(problems),
            headers=retry_later(),
        )


async def submit_job(request: Request) -> Response:
    settings, registry, store = _state(request)
    body = await read_json(request)
    raw = await request.body()  # read already: kept by the request
    ((job, options),) = parse_jobs([body], registry, settings, batch=False, body=raw)
    await _ensure_durable(request)
    header = request.headers.get("idempotency-key")  # present but empty is an invalid key
    key = options.idempotency_key if header is None else header
    if key is None:
        with request_metrics.PUBLISH_SECONDS.time():
            await store.publish_soon(job)
        request_metrics.accepted([job])
        (view,) = await answers(store, [job])
        return JSONResponse(view, 202, headers={"Location": f"/jobs/{job.id}"})
    if not IDEMPOTENCY_KEY.fullmatch(key):
        message = (
            "the Idempotency-Key must be 1-200 printable ASCII characters, "
            "not starting or ending with a space"
        )
        raise ApiError(422, "invalid_job", message)
    if options.idempotency_key not in (None, key):
        raise ApiError(422, "invalid_job", "Idempotency-Key header and idempotency_key differ")
    with request_metrics.PUBLISH_SECONDS.time():
        job_id, verdict = await store.publish_once(
            job, key, _fingerprint(body), settings.idempotency_ttl
        )
    if verdict == "different":
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used for a different request",
            {"id": job_id},
        )
    if verdict == "same":  # a repeat: the original job, as it is now
        view = await store.job(job_id) or {"id": job_id, "status": "expired"}
        return JSONResponse(view, 200, headers={"Location": f"/jobs/{job_id}"})
    request_metrics.accepted([job])
    (view,) = await answers(store, [job])
    return JSONResponse(view, 202, headers={"Location": f"/jobs/{job.id}"})


def _fingerprint(body: dict[str, Any]) -> str:
    """What makes two requests 'the same' for idempotency: every field but the key itself."""
    request = {k: v for k, v in body.items() if k != "idempotency_key"}
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def submit_batch(request: Request) -> Response:
    settings, registry, store = _state(request)
    body = await read_json(request)
    items = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items or set(body) != {"jobs"}:
        raise ApiError(422, "invalid_batch", 'expected {"jobs": [...]} with at least one job')
    if len(items) > constants.MAX_BATCH_JOBS:
        raise ApiError(
            422,
            "batch_too_large",
            f"a batch holds at most {constants.MAX_BATCH_JOBS} jobs, got {len(items)}",
        )
    raw = await request.body()  # read already: kept by the request
    batch = [job for job, _ in parse_jobs(items, registry, settings, batch=True, body=raw)]
    order = dependencies.publish_order(batch)
    await _ensure_durable(request)
    with request_metrics.PUBLISH_SECONDS.time():
        await store.publish(order)
    request_metrics.accepted(batch)
    return JSONResponse({"jobs": await answers(store, list(batch))}, 202)


async def get_job(request: Request) -> Response:
    """A job as it is; with `?wait=<s>`, once it has ended or after that many seconds (a
    long-poll: see service/store/waits.py)."""
    _, registry, store = _state(request)
    job_id: str = request.path_params["job_id"]
    problems = Problems()
    wait = params.wait_seconds(request.query_params.get("wait"), problems)
    if problems:
        raise problems.error("invalid_parameters", "invalid parameter(s)")
    if not records.valid_id(job_id):
        raise _not_found(job_id, registry)
    view, cursor = await store.job_and_cursor(job_id)
    if view is not None and wait > 0 and view["status"] not in FINAL:
        await request.app.state.waits.until_final(job_id, cursor, wait)
        view = await store.job(job_id)
    view = view or await job_history.from_history(request, job_id)
    if view is None:
        raise _not_found(job_id, registry)
    return JSONResponse(view)


async def cancel_job(request: Request) -> Response:
    """Cancel a queued or scheduled job at once (200); ask a running one's worker to stop it
    (202, it ends `canceled`); a finished, failed or canceled job is a 409."""
    _, registry, store = _state(request)
    job_id: str = request.path_params["job_id"]
    outcome, status = await store.cancel(job_id) if records.valid_id(job_id) else ("missing", "")
    if outcome == "missing":
        raise _not_found(job_id, registry)
    if outcome == "conflict":
        raise ApiError(
            409,
            "job_not_cancelable",
            f"job {job_id} is {status}: too late to cancel",
            {"status": status},
        )
    code = 200 if outcome == "canceled" else 202
    return JSONResponse({"id": job_id, "status": outcome}, code)


def _not_found(job_id: str, registry: Registry) -> ApiError:
    """404, or 410 when the id itself shows the job is older than any job is kept."""
    created = records.id_created_at(job_id)
    kept = min((min(t.result_ttl, t.failure_ttl) for t in registry), default=0)
    if created is not None and kept and time.time() - created > kept:
        message = (
            f"job {job_id} was created at {records.utc_iso(created)}; finished and failed "
            f"jobs are kept result_ttl/failure_ttl seconds (here at least {kept}) after "
            "they end, so it has expired"
        )
        return ApiError(410, "job_expired", message, {"created_at": records.utc_iso(created)})
    return ApiError(404, "job_not_found", f"no job with id {clip(job_id)!r}")


async def list_queues(request: Request) -> Response:
    settings, registry, store = _state(request)
    bases = registry.queues(settings.queue_name)
    return JSONResponse({"queues": await store.queues(queues.served(bases))})


async def backlog(request: Request) -> Response:
    """The true backlog, for autoscaling (KEDA's metrics-api scaler reads `backlog`): every
    priority of every queue, plus scheduled jobs that are due. Needs a key when API_KEYS is set:
    it names the queues."""
    settings, registry, store = _state(request)
    bases = registry.queues(settings.queue_name)
    return JSONResponse(await store.backlog(queues.served(bases)))


async def health(request: Request) -> Response:
    """Liveness: the process answers. No dependency is checked here."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: Redis answers a PING, and MongoDB too when MONGODB_URI is set.

    Open to anyone (probes send no key), so it names a failing component, never its error
    (which tells addresses and versions): the error goes to the log, once until it changes."""
    _, _, store = _state(request)
    body: dict[str, Any] = {"status": "ok", "redis": "ok"}
    failures: dict[str, str] = {}
    try:
        await store.client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        body["redis"], failures["redis"] = "unavailable", str(exc)
    if body["redis"] == "ok" and request.app.state.strict is not None:
        problems = await request.app.state.strict.check(store.client)
        body["durability"] = "not_durable" if problems else "ok"
        if problems:
            failures["durability"] = "; ".join(problems)
    if request.app.state.mongo is not None:
        up = await mongo.ping_async(request.app.state.mongo)
        body["mongodb"] = "ok" if up else "unavailable"
    _log_changes(request.app.state.not_ready, failures)
    if any(value != "ok" for value in body.values()):
        body["status"] = "unavailable"
        return JSONResponse(body, 503, headers=retry_later())
    return JSONResponse(body)


def _log_changes(logged: dict[str, str], failures: dict[str, str]) -> None:
    """Log each failure /ready found, unless the same one was logged last time."""
    for component, detail in failures.items():
        if logged.get(component) != detail:
            log.warning("not ready: %s: %s", component, detail)
    logged.clear()
    logged.update(failures)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
