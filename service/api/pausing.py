"""Pausing a queue over HTTP: `POST /queues/{name}/pause` and `/resume`.

A paused named queue (its `.high` and `.low` priorities too) still takes jobs, but no worker
claims any (see service/store/claim.lua): a job a worker claimed before the pause may still
start, within PREFETCH_WAIT_SECONDS of its claim, or goes back to the queue; running jobs
finish. The state is a set in Redis, so it outlives every process, and both calls are
idempotent: each answers the queue's state, 200.

Any valid queue name may be paused, as BullMQ allows, not only those this API's job types
name: the state lives in Redis, where workers of another deployment (WORKER_QUEUES) may
serve queues this registry does not know, and a queue can be paused before its first job.
GET /queues lists every paused queue, so a pause of a mistyped name is seen and undone.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.errors import ApiError, JSONResponse, clip
from service.api.openapi_parts import REDIS_UNAVAILABLE, response
from service.api.routes import resource
from service.config import queues
from service.store.publisher import Store

log = logging.getLogger("service.api")

# A named queue (queues.valid_base), less `.` and `..`: clients drop those from a URL's path
# (RFC 3986's dot segments), so no request could name them.
QUEUE_NAME_PATTERN = r"^(?!\.{1,2}$)(?!.*\.(?:high|low)$)[A-Za-z0-9_.-]+$"


def _queue(request: Request) -> str:
    name: str = request.path_params["name"]
    if name in (".", "..") or not queues.valid_base(name):
        message = (
            f"{clip(name)!r} is not a queue name: letters, digits, '_', '.' and '-', not "
            "ending in .high or .low (the priorities of a queue are paused with it)"
        )
        raise ApiError(422, "invalid_queue", message, {"queue": clip(name)})
    return name


async def _set_paused(request: Request, paused: bool) -> Response:
    name = _queue(request)
    store: Store = request.app.state.store
    if await store.set_paused(name, paused):
        log.info("queue %s %s", name, "paused" if paused else "resumed")
    return JSONResponse({"queue": name, "paused": paused})


async def pause_queue(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume_queue(request: Request) -> Response:
    return await _set_paused(request, False)


routes: list[Route] = [
    resource("/queues/{name}/pause", {"POST": pause_queue}),
    resource("/queues/{name}/resume", {"POST": resume_queue}),
]


_STATE = {
    "type": "object",
    "required": ["queue", "paused"],
    "properties": {"queue": {"type": "string"}, "paused": {"type": "boolean"}},
}


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "A named queue: its .high and .low priorities go with it",
        "schema": {"type": "string", "pattern": QUEUE_NAME_PATTERN},
    }
    invalid = response("invalid_queue: not a queue name (nothing was changed)")
    pause_doc = (
        "Workers claim none of its jobs (any priority) from within a second on; jobs already "
        "running finish, and publishing goes on. Any valid name may be paused, also one no job "
        "type names yet; pausing a paused queue changes nothing. The state is kept in Redis."
    )
    resume_doc = (
        "Workers claim its jobs again at once; resuming a queue not paused changes nothing."
    )
    return {
        "/queues/{name}/pause": {
            "post": {
                "operationId": "pauseQueue",
                "summary": "Pause a queue: jobs are still accepted, none starts",
                "description": pause_doc,
                "parameters": [name],
                "responses": {
                    "200": response("The queue's state: paused", _STATE),
                    "422": invalid,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/queues/{name}/resume": {
            "post": {
                "operationId": "resumeQueue",
                "summary": "Resume a paused queue",
                "description": resume_doc,
                "parameters": [name],
                "responses": {
                    "200": response("The queue's state: not paused", _STATE),
                    "422": invalid,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
    }
