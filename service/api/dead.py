"""The dead-letter queue over HTTP: failed jobs (RQ's failed registries), listed, retried, deleted.

Every endpoint takes the same filter (type, queue, error, since, until; see `dead.Filter`).
A listing, a bulk retry and a bulk delete each examine at most DEAD_LIST_BUDGET registry
entries, then answer a cursor to go on from. The cursor is opaque to clients: base64url of
`<score> <id>`, the registry position of the last job examined (see
service/store/dead_letters.py), so it stays valid while jobs are retried or deleted around it.
A bulk action stops between pages once its client has gone away.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api import params
from service.api.errors import LISTED_ERRORS_DOC, ApiError, JSONResponse, Problems, clip
from service.api.submit import read_json
from service.config import constants, queues
from service.jobs import records
from service.store.dead_letters import DeadJob, DeadLetters, Filter, Position, Sweep

log = logging.getLogger("service.api")

_FILTERS = ("type", "queue", "error", "since", "until")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_CHARS = {"type": 101, "queue": 200, "error": 200, "since": 64, "until": 64}


def _dead_letters(request: Request) -> DeadLetters:
    dead: DeadLetters = request.app.state.dead
    return dead


async def _queues(request: Request, dead: DeadLetters, where: Filter) -> list[str]:
    """The filter's queue, or every queue: those the API serves (as GET /queues lists them)
    and any other Redis knows."""
    if where.queue is not None:
        return [where.queue]
    state = request.app.state
    bases = state.registry.queues(state.settings.queue_name)
    return await dead.queues(queues.served(bases))


async def list_dead(request: Request) -> Response:
    problems = Problems()
    query = _query(request, (*_FILTERS, "limit", "cursor"), problems)
    where = _filter(query, problems)
    limit = params.limit(query.get("limit"), problems)
    after = _cursor(query.get("cursor"), problems)
    _check(problems)
    dead = _dead_letters(request)
    found, position = await dead.page(await _queues(request, dead, where), where, limit, after)
    next_cursor = None if position is None else _encode_cursor(position)
    return JSONResponse({"jobs": [job.view() for job in found], "next_cursor": next_cursor})


async def retry_one(request: Request) -> Response:
    job_id: str = request.path_params["job_id"]
    retried = await _dead_letters(request).retry([job_id]) if records.valid_id(job_id) else {}
    if job_id not in retried:
        raise _not_dead(job_id)
    return JSONResponse({"id": job_id, "queue": retried[job_id], "status": "queued"})


async def retry_matching(request: Request) -> Response:
    body = await read_json(request)
    problems = Problems()
    if not isinstance(body, dict):
        problems.append({"field": "body", "message": 'expected an object: {"dry_run": true}'})
        raise _invalid(problems)
    known = ("dry_run", "all", "cursor", *_FILTERS)
    unknown = sorted(body.keys() - set(known))
    message = _unknown(known)
    problems.extend(({"field": name, "message": message} for name in unknown), len(unknown))
    dry_run = body.get("dry_run")
    if not isinstance(dry_run, bool):
        problems.append({"field": "dry_run", "message": "required: true or false"})
    everything = body.get("all")
    if everything is not None and not isinstance(everything, bool):
        problems.append({"field": "all", "message": "expected true or false"})
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        problems.append({"field": "cursor", "message": "expected a string"})
        cursor = None
    where = _filter(body, problems)
    after = _cursor(cursor or None, problems)
    _all_rule(everything is True, where, dry_run is False, ('"all": true', "retries"), problems)
    _check(problems)
    dead = _dead_letters(request)
    ids: list[str] = []

    async def count_or_retry(found: list[DeadJob]) -> int:
        if not dry_run:
            return len(await dead.retry([job.id for job in found]))
        ids.extend(job.id for job in found[: constants.DEAD_DRY_RUN_IDS - len(ids)])
        return len(found)

    count, sweep = await _sweep(request, where, after, count_or_retry)
    answer = {"dry_run": dry_run, "count": count, **_progress(sweep)}
    return JSONResponse({**answer, "ids": ids} if dry_run else answer)


async def delete_one(request: Request) -> Response:
    job_id: str = request.path_params["job_id"]
    if not records.valid_id(job_id) or not await _dead_letters(request).delete([job_id]):
        raise _not_dead(job_id)
    return Response(status_code=204)


async def delete_matching(request: Request) -> Response:
    problems = Problems()
    query = _query(request, (*_FILTERS, "all", "cursor"), problems)
    where = _filter(query, problems)
    after = _cursor(query.get("cursor"), problems)
    everything = query.get("all")
    if everything not in (None, "true", "false"):
        problems.append({"field": "all", "message": "expected true or false"})
    else:
        _all_rule(everything == "true", where, True, ("all=true", "deletes"), problems)
    _check(problems)
    dead = _dead_letters(request)

    async def delete(found: list[DeadJob]) -> int:
        return await dead.delete([job.id for job in found])

    count, sweep = await _sweep(request, where, after, delete)
    return JSONResponse({"count": count, **_progress(sweep)})


def _all_rule(
    everything: bool, where: Filter, needed: bool, said: tuple[str, str], problems: Problems
) -> None:
    """`all` stands for every dead job: never with a filter; and an action on every dead job
    (`needed`) must say so with it, not with an empty filter (a forgotten one). `said`: the
    flag as this endpoint spells it, and the verb."""
    flag, verb = said
    if everything and not where.empty:
        problems.append({"field": "all", "message": f"{flag} {verb} everything: no filters"})
    elif needed and not everything and where.empty and not problems:
        message = f"give at least one filter ({', '.join(_FILTERS)}), or {flag}"
        problems.append({"field": "all", "message": message})


async def _sweep(
    request: Request,
    where: Filter,
    after: Position | None,
    act: Callable[[list[DeadJob]], Awaitable[int]],
) -> tuple[int, Sweep]:
    """`act` on each page of a bounded sweep (see dead.Sweep); the sum of what it returns.
    Between pages, a client that has gone away stops the work: nobody would read the answer,
    and what is done stays done (a retried or deleted job is never half so)."""
    dead = _dead_letters(request)
    sweep = dead.sweep(await _queues(request, dead, where), where, after)
    count = 0
    async with contextlib.aclosing(sweep.pages()) as pages:
        async for found in pages:
            count += await act(found)
            if await request.is_disconnected():
                log.info(
                    "%s %s: the client went away after %d entries (%d jobs); stopped",
                    request.method,
                    request.url.path,
                    sweep.examined,
                    count,
                )
                break
    return count, sweep


def _progress(sweep: Sweep) -> dict[str, Any]:
    """How far a bulk action got: the counts cover `examined` entries; `next_cursor` (null
    at the end) goes on from there."""
    cursor = None if sweep.position is None else _encode_cursor(sweep.position)
    return {"examined": sweep.examined, "next_cursor": cursor}


routes: list[Route] = [
    Route("/dead", list_dead, methods=["GET"]),
    Route("/dead", delete_matching, methods=["DELETE"]),
    Route("/dead/retry", retry_matching, methods=["POST"]),
    Route("/dead/{job_id}/retry", retry_one, methods=["POST"]),
    Route("/dead/{job_id}", delete_one, methods=["DELETE"]),
]


# --- Parameters: every problem reported at once, each naming its parameter -------------------
def _not_dead(job_id: str) -> ApiError:
    message = f"no job with id {clip(job_id)!r} in the dead-letter queue"
    return ApiError(404, "not_in_dead_letter_queue", message)


def _check(problems: Problems) -> None:
    if problems:
        raise _invalid(problems)


def _invalid(problems: Problems) -> ApiError:
    return problems.error("invalid_parameters", "invalid parameter(s)", "; nothing was changed")


def _unknown(known: tuple[str, ...]) -> str:
    return f"unknown parameter; known: {', '.join(known)}"


def _query(request: Request, known: tuple[str, ...], problems: Problems) -> dict[str, str]:
    """The query parameters, each at most once; an empty value counts as not given."""
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            problems.append({"field": name, "message": _unknown(known)})
        elif name in values:
            problems.append({"field": name, "message": "given more than once"})
        elif value:
            values[name] = value
    return values


def _filter(values: Mapping[str, Any], problems: Problems) -> Filter:
    """The filter in a query string or a JSON body; `null` or '' counts as not given."""
    text: dict[str, str | None] = {}
    for name in _FILTERS:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            problems.append({"field": name, "message": "expected a string"})
        elif value and len(value) > _MAX_CHARS[name]:
            problems.append({"field": name, "message": f"at most {_MAX_CHARS[name]} characters"})
        else:
            text[name] = value or None
    job_type, queue = text.get("type"), text.get("queue")
    if job_type is not None and "*" in job_type[:-1]:
        message = "a job type, or a prefix ending in '*' (email.*)"
        problems.append({"field": "type", "message": message})
    # Any name of queue characters, as the OpenAPI pattern says: one that cannot exist
    # (`a.high.high`) matches nothing.
    if queue is not None and not _QUEUE.fullmatch(queue):
        problems.append({"field": "queue", "message": "not a queue name"})
    since = params.instant("since", text.get("since"), problems)
    until = params.instant("until", text.get("until"), problems)
    if since is not None and until is not None and since > until:
        problems.append({"field": "until", "message": "until is before since"})
    return Filter(type=job_type, queue=queue, error=text.get("error"), since=since, until=until)


def _encode_cursor(position: Position) -> str:
    score, job_id = position
    return base64.urlsafe_b64encode(f"{score!r} {job_id}".encode()).decode().rstrip("=")


def _cursor(value: str | None, problems: Problems) -> Position | None:
    if value is None:
        return None
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        score_text, job_id = text.split(" ")
        score = float(score_text)
        if math.isfinite(score) and records.valid_id(job_id):
            return score, job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    problems.append({"field": "cursor", "message": "not a cursor this API returned"})
    return None


# --- OpenAPI ------------------------------------------------------------------------------------
_ERROR = {"$ref": "#/components/schemas/Error"}
_FILTER_DOCS = {
    "type": "A job type, or a prefix ending in `*` (`email.*`)",
    "queue": "One RQ queue, priority included (`emails.high`)",
    "error": "Case-insensitive substring of the last attempt's error text (the whole traceback)",
    "since": "Failed at or after this RFC 3339 time with a timezone",
    "until": "Failed at or before this RFC 3339 time with a timezone",
}
# What `_filter` accepts (an empty value counts as not given); `since` after `until` is a 422
# that no schema can say.
_FILTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "type": {"maxLength": _MAX_CHARS["type"], "pattern": r"^[^*]*[*]?$"},
    "queue": {"maxLength": _MAX_CHARS["queue"], "pattern": r"^[A-Za-z0-9_.-]*$"},
    "error": {"maxLength": _MAX_CHARS["error"]},
    "since": {"format": "date-time"},
    "until": {"format": "date-time"},
}
_DEAD_JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": ["string", "null"]},
        "queue": {"type": "string"},
        "failed_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "attempts": {"type": "integer"},
        "crashes": {"type": "integer"},
        "reason": {
            "enum": [
                "exception",
                "timeout",
                "result_not_json",
                "result_too_large",
                "worker_lost",
                None,
            ]
        },
        "error": {"type": ["string", "null"], "description": "Last line of the traceback"},
        "payload": {},
    },
}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _ERROR}},
    }


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def openapi_paths(*, auth: bool = False) -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes (`auth`: API_KEYS is set)."""
    filters = [
        _query_param(name, doc, params.or_empty({"type": "string", **_FILTER_SCHEMAS[name]}))
        for name, doc in _FILTER_DOCS.items()
    ]
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    invalid = _response(
        "An invalid parameter; nothing changed. " + LISTED_ERRORS_DOC,
        {"$ref": "#/components/schemas/Invalid"},
    )
    common: dict[str, Any] = {"503": _response("Redis unavailable (see Retry-After)")}
    security: list[dict[str, list[str]]] = []
    if auth:
        common["401"] = _response("Missing or invalid API key")
        security = [{"bearer": []}]
    not_dead = _response("Not in the dead-letter queue (not_in_dead_letter_queue)")
    cursor = _query_param("cursor", "`next_cursor` of the previous answer", {"type": "string"})
    budget = (
        f"One request examines at most {constants.DEAD_LIST_BUDGET} registry entries, newest "
        "failure first, and answers `next_cursor`: send the same request again with it as "
        "`cursor` until it is null. `count` covers the entries this request examined "
        "(`examined`). A client that hangs up stops the work between pages of "
        f"{constants.DEAD_FIELDS_PAGE} entries; what was done stays done."
    )
    progress = {
        "count": {"type": "integer"},
        "examined": {"type": "integer", "description": "Registry entries this request examined"},
        "next_cursor": {"type": ["string", "null"], "description": "null: the end was reached"},
    }
    retry_body = {
        "type": "object",
        "required": ["dry_run"],
        "additionalProperties": False,
        "properties": {
            "dry_run": {"type": "boolean", "description": "Count and list, change nothing"},
            "all": {
                "type": ["boolean", "null"],
                "description": "true: every dead job (no filters); required to retry them all",
            },
            "cursor": {
                "type": ["string", "null"],
                "description": "`next_cursor` of the previous answer",
            },
            **{
                name: {
                    "anyOf": [
                        {"type": "string", **_FILTER_SCHEMAS[name]},
                        {"const": ""},  # '' and null count as not given
                        {"type": "null"},
                    ],
                    "description": doc,
                }
                for name, doc in _FILTER_DOCS.items()
            },
        },
    }
    return {
        "/dead": {
            "get": {
                "summary": "Dead jobs (failed, out of retries), newest failure first",
                "description": "Ordered by failed-registry score (failure time + failure_ttl). "
                f"Follow `next_cursor` until it is null: one request examines at most "
                f"{constants.DEAD_LIST_BUDGET} entries, so a sparse filter may answer fewer "
                "jobs than `limit`, "
                "even none.",
                "security": security,
                "parameters": [
                    *filters,
                    _query_param(
                        "limit",
                        "Most jobs returned",
                        params.or_empty(
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": constants.LIST_MAX_LIMIT,
                                "default": constants.LIST_DEFAULT_LIMIT,
                            }
                        ),
                    ),
                    cursor,
                ],
                "responses": {
                    "200": _response(
                        "A page of dead jobs",
                        _object(
                            jobs={"type": "array", "items": _DEAD_JOB},
                            next_cursor={"type": ["string", "null"]},
                        ),
                    ),
                    "422": invalid,
                    **common,
                },
            },
            "delete": {
                "summary": "Delete the matching dead jobs (a filter, or all=true, is required)",
                "description": budget,
                "security": security,
                "parameters": [
                    *filters,
                    _query_param(
                        "all",
                        "true: delete every dead job (no filters)",
                        params.or_empty({"type": "boolean"}),
                    ),
                    cursor,
                ],
                "responses": {
                    "200": _response("How many were deleted", _object(**progress)),
                    "422": invalid,
                    **common,
                },
            },
        },
        "/dead/retry": {
            "post": {
                "summary": "Retry the matching dead jobs, or (dry_run) count them; retrying "
                'every one needs "all": true',
                "description": budget,
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": retry_body}},
                },
                "responses": {
                    "200": _response(
                        "How many were retried (or, in a dry run, match) among the entries "
                        "examined; a dry run also lists their ids "
                        f"(at most {constants.DEAD_DRY_RUN_IDS})",
                        _object(
                            dry_run={"type": "boolean"},
                            **progress,
                            ids={"type": "array", "items": {"type": "string"}},
                        ),
                    ),
                    "400": _response("Malformed JSON"),
                    "413": _response("Body over MAX_BODY_BYTES"),
                    "415": _response("Not application/json"),
                    "422": invalid,
                    **common,
                },
            }
        },
        "/dead/{job_id}/retry": {
            "post": {
                "summary": "Put a dead job back on its queue at once, as new; its history is kept",
                "security": security,
                "parameters": [job_id],
                "responses": {
                    "200": _response(
                        "Queued",
                        _object(
                            id={"type": "string"},
                            queue={"type": "string"},
                            status={"const": "queued"},
                        ),
                    ),
                    "404": not_dead,
                    **common,
                },
            }
        },
        "/dead/{job_id}": {
            "delete": {
                "summary": "Delete a dead job: its record, history and dead-letter entry",
                "security": security,
                "parameters": [job_id],
                "responses": {"204": {"description": "Deleted"}, "404": not_dead, **common},
            }
        },
    }
