"""Limits over HTTP: `GET /limits`, `GET/PUT/DELETE /limits/{job_type}`.

A job type's limits come from its `@job(rate_limit=..., concurrency_limit=..., limit_key=...)`;
PUT replaces them (all three fields together: one left out is no limit) until DELETE, which
goes back to the code's. The override lives in Redis, where every worker's next claim reads
it: no restart. The answer shows the limits that apply, where they come from (`api`, `code` or
null), the code's own, and where they stand: attempts running under a concurrency limit and
jobs held for a slot (over every key value), and how many key values have either.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.errors import ApiError, JSONResponse, Problems, clip
from service.api.openapi_parts import BODY_ERRORS, REDIS_UNAVAILABLE, invalid, record, response
from service.api.routes import resource
from service.api.submit import read_json
from service.jobs.limit import KEY_PATTERN, MAX_CONCURRENCY, RATE_PATTERN, Limit, LimitInvalid
from service.jobs.registry import NAME_PATTERN, Registry
from service.store.limits import Limits

log = logging.getLogger("service.api")

FIELDS = ("rate_limit", "concurrency_limit", "limit_key")


def _limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


def _job_type(request: Request) -> str:
    """The job type the path names; 404 for one this service does not know."""
    name: str = request.path_params["job_type"]
    registry: Registry = request.app.state.registry
    if name not in registry:
        message = f"unknown job type {clip(name)!r}"
        raise ApiError(404, "unknown_job_type", message, {"known_types": registry.names()})
    return name


async def _view(request: Request, job_type: str) -> dict[str, Any]:
    """The type's limits; the code's as this API's registry has them (workers write the same
    code's to Redis at start, so they are known before any worker ran)."""
    registry: Registry = request.app.state.registry
    usage = await _limits(request).usage(job_type)
    return dataclasses.replace(usage, code=registry.get(job_type).limit).as_json(job_type)


async def list_limits(request: Request) -> Response:
    registry: Registry = request.app.state.registry
    names = {t.name for t in registry if t.limit is not None}
    names.update(n for n in await _limits(request).names() if n in registry)
    return JSONResponse({"limits": [await _view(request, name) for name in sorted(names)]})


async def get_limit(request: Request) -> Response:
    return JSONResponse(await _view(request, _job_type(request)))


def _parse(body: Any) -> Limit:
    """The limit a PUT body states, or a 422 naming every field at fault."""
    problems = Problems()
    if not isinstance(body, dict):
        problems.append({"field": "", "message": "expected a JSON object"})
        raise problems.error("invalid_limit", "validation error(s); nothing was changed")
    for field in body:
        if field not in FIELDS:
            problems.append({"field": str(field), "message": "unknown field"})
    limit = None
    given = {field: body.get(field) for field in FIELDS}
    if isinstance(given["concurrency_limit"], float) and given["concurrency_limit"].is_integer():
        given["concurrency_limit"] = int(given["concurrency_limit"])
    for field in FIELDS:  # each checked alone, so every bad field is named
        alone = {name: given[name] if name == field else None for name in FIELDS}
        if field == "limit_key":
            alone["concurrency_limit"] = 1
        try:
            Limit.of(**alone)
        except LimitInvalid as exc:
            if field in body:
                problems.append({"field": exc.field, "message": exc.message})
    if not problems:
        if given["rate_limit"] is None and given["concurrency_limit"] is None:
            message = "give rate_limit or concurrency_limit (DELETE goes back to the code's)"
            problems.append({"field": "", "message": message})
        else:
            limit = Limit.of(**given)
    if problems or limit is None:
        raise problems.error("invalid_limit", "validation error(s); nothing was changed")
    return limit


async def put_limit(request: Request) -> Response:
    job_type = _job_type(request)
    limit = _parse(await read_json(request))
    await _limits(request).put(job_type, limit)
    log.info("limits of %s set: %s", job_type, limit.encode())
    return JSONResponse(await _view(request, job_type))


async def delete_limit(request: Request) -> Response:
    job_type = _job_type(request)
    if await _limits(request).delete(job_type):
        log.info("limits of %s back to the code's", job_type)
    return JSONResponse(await _view(request, job_type))


routes: list[Route] = [
    resource("/limits", {"GET": list_limits}),
    resource("/limits/{job_type}", {"GET": get_limit, "PUT": put_limit, "DELETE": delete_limit}),
]


# --- OpenAPI ------------------------------------------------------------------------------------
_RATE = {
    "type": "string",
    "pattern": RATE_PATTERN,
    "description": "At most N starts in any sliding period: 20/second, 100/minute, 5/hour",
    "examples": ["20/second"],
}
_CONCURRENCY = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_CONCURRENCY,
    "description": "At most this many attempts running at once",
}
_KEY = {
    "type": "string",
    "pattern": KEY_PATTERN,
    "description": "A top-level payload field: each of its values has its own limits (a "
    "payload without it shares the '' value's)",
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


_SETTINGS = {
    "rate_limit": _nullable(_RATE),
    "concurrency_limit": _nullable(_CONCURRENCY),
    "limit_key": _nullable(_KEY),
}
SCHEMAS: dict[str, Any] = {
    "Limit": record(
        {
            "type": {"type": "string"},
            **_SETTINGS,
            "source": {"type": ["string", "null"], "enum": ["api", "code", None]},
            "code": {"anyOf": [record(_SETTINGS), {"type": "null"}]},
            "running": {"type": "integer", "minimum": 0},
            "held": {"type": "integer", "minimum": 0},
            "keys": {"type": "integer", "minimum": 0},
        }
    ),
    "LimitSettings": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"rate_limit": _RATE, "concurrency_limit": _CONCURRENCY, "limit_key": _KEY},
        "anyOf": [{"required": ["rate_limit"]}, {"required": ["concurrency_limit"]}],
    },
}


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes."""
    shown = response("The job type's limits", {"$ref": "#/components/schemas/Limit"})
    unknown = response("unknown_job_type: no such job type")
    one = [
        {
            "name": "job_type",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": NAME_PATTERN.pattern},
        }
    ]
    return {
        "/limits": {
            "get": {
                "operationId": "listLimits",
                "summary": "Every job type with a limit, of the code or of the API",
                "responses": {
                    "200": response(
                        "The limits",
                        record(
                            {
                                "limits": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Limit"},
                                }
                            }
                        ),
                    ),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/limits/{job_type}": {
            "get": {
                "parameters": one,
                "operationId": "getLimit",
                "summary": "A job type's limits and where they stand",
                "responses": {"200": shown, "404": unknown, "503": REDIS_UNAVAILABLE},
            },
            "put": {
                "parameters": one,
                "operationId": "putLimit",
                "summary": "Replace a job type's limits until DELETE; every worker applies "
                "them at its next claim",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/LimitSettings"}
                        }
                    },
                },
                "responses": {
                    "200": shown,
                    "404": unknown,
                    **BODY_ERRORS,
                    "422": invalid("invalid_limit: a field out of its range; nothing changed."),
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "delete": {
                "parameters": one,
                "operationId": "deleteLimit",
                "summary": "Drop the API's limits: the code's apply again",
                "responses": {"200": shown, "404": unknown, "503": REDIS_UNAVAILABLE},
            },
        },
    }
