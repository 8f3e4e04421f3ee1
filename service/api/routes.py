"""The HTTP endpoints. Each validates, makes one Redis round trip, and answers."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import constants, jobs, queues
from service.api.errors import ApiError, JSONResponse
from service.api.submit import parse_jobs, read_json
from service.registry import Registry
from service.settings import Settings
from service.store import Store


def _state(request: Request) -> tuple[Settings, Registry, Store]:
    state = request.app.state
    return state.settings, state.registry, state.store


def _accepted(job: jobs.NewJob) -> dict[str, Any]:
    accepted = {"id": job.id, "type": job.type, "queue": job.queue}
    if job.run_at is None:
        return {**accepted, "status": "queued"}
    return {**accepted, "status": "scheduled", "run_at": jobs.utc_iso(job.run_at)}


async def submit_job(request: Request) -> Response:
    settings, registry, store = _state(request)
    body = await read_json(request)
    ((job, _),) = parse_jobs([body], registry, settings.queue_name, batch=False)
    await store.publish([job])
    return JSONResponse(_accepted(job), 202, headers={"Location": f"/jobs/{job.id}"})


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
    batch = [job for job, _ in parse_jobs(items, registry, settings.queue_name, batch=True)]
    await store.publish(batch)
    return JSONResponse({"jobs": [_accepted(job) for job in batch]}, 202)


async def get_job(request: Request) -> Response:
    _, _, store = _state(request)
    job_id: str = request.path_params["job_id"]
    view = await store.job(job_id) if _valid_id(job_id) else None
    if view is None:
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    return JSONResponse(view)


def _valid_id(job_id: str) -> bool:
    # RQ's rule for ids; anything else cannot exist and must not reach a key name.
    return 0 < len(job_id) <= 128 and job_id.replace("-", "").replace("_", "").isalnum()


async def list_queues(request: Request) -> Response:
    settings, registry, store = _state(request)
    bases = {settings.queue_name} | {t.queue for t in registry if t.queue}
    return JSONResponse({"queues": await store.queues(queues.served(bases))})


async def health(request: Request) -> Response:
    """Liveness: the process answers. No dependency is checked here."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: Redis answers a PING."""
    _, _, store = _state(request)
    try:
        await store.client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        body: dict[str, Any] = {"status": "unavailable", "redis": f"unavailable: {exc}"}
        return JSONResponse(body, 503, headers={"Retry-After": str(constants.RETRY_AFTER_SECONDS)})
    return JSONResponse({"status": "ok", "redis": "ok"})


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
