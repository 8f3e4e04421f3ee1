"""The dead-letter queue over HTTP: failed jobs (RQ's failed registries), listed, retried, deleted.

Every endpoint takes the same filter (type, queue, error, since, until; see `dead.Filter`).
A listing, a bulk retry and a bulk delete each examine at most DEAD_LIST_BUDGET registry
entries, then answer a cursor to go on from: `<score>_<id>`, the registry position of the
last job examined (see service/store/dead_letters.py), so it stays valid while jobs are retried
or deleted around it. A bulk action stops between pages once its client has gone away.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api import params
from service.api.errors import ApiError, JSONResponse, Problems, clip
from service.api.openapi_parts import (
    BODY_ERRORS,
    JOB_ID_PATTERN,
    REDIS_UNAVAILABLE,
    invalid,
    job_id_param,
    or_empty,
    query_param,
    response,
)
from service.api.routes import resource
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
    dead = _dead_letters(request)
    retried = (await dead.retry([job_id])).queues if records.valid_id(job_id) else {}
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
    if not records.valid_id(job_id) or not (await _dead_letters(request).delete([job_id])).count:
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
        return (await dead.delete([job.id for job in found])).count

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
    resource("/dead", {"GET": list_dead, "DELETE": delete_matching}),
    resource("/dead/retry", {"POST": retry_matching}),
    resource("/dead/{job_id}/retry", {"POST": retry_one}),
    resource("/dead/{job_id}", {"DELETE": delete_one}),
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


# A cursor is a position in the registries' order: `<score>_<id>` (see
# service/store/dead_letters.py). Any such string is a position, so the OpenAPI pattern is the
# whole rule.
CURSOR_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?_" + JOB_ID_PATTERN[1:]
_CURSOR = re.compile(CURSOR_PATTERN)


def _encode_cursor(position: Position) -> str:
    score, job_id = position
    text = repr(score)  # exact; positional for every score a registry holds (epoch seconds)
    return f"{text if 'e' not in text else format(score, 'f')}_{job_id}"


def _cursor(value: str | None, problems: Problems) -> Position | None:
    score, job_id = params.cursor(value, _CURSOR, problems)
    return (float(score), job_id) if job_id else None


# --- OpenAPI ------------------------------------------------------------------------------------
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
# `all` stands for every dead job: never with a filter (see `_all_rule`), as JSON Schema says
# it of an object holding the filters and `all`.
_ANY_FILTER = {
    "anyOf": [
        {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
        for name in _FILTERS
    ]
}
_ALL = {"required": ["all"], "properties": {"all": {"const": True}}}
_NOT_ALL_WITH_A_FILTER = {"not": {"allOf": [_ALL, _ANY_FILTER]}}
_DEAD_JOB = {
    "type": "object",
    "required": ["id", "queue"],
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
_NEXT_CURSOR = {
    "type": ["string", "null"],
    "pattern": CURSOR_PATTERN,
    "description": "null: the end was reached",
}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes."""
    filters = {name: or_empty({"type": "string", **_FILTER_SCHEMAS[name]}) for name in _FILTER_DOCS}
    cursor_doc = "`next_cursor` of the previous answer"
    cursor = {"type": "string", "pattern": CURSOR_PATTERN}
    dead_link = {"job_id": "$response.body#/jobs/0/id"}
    not_dead = response("not_in_dead_letter_queue: no such job among the dead")
    budget = (
        f"One request examines at most {constants.DEAD_LIST_BUDGET} registry entries, newest "
        "failure first, and answers `next_cursor`: send the same request again with it as "
        "`cursor` until it is null. `count` covers the entries this request examined "
        "(`examined`). A client that hangs up stops the work between pages of "
        f"{constants.DEAD_FIELDS_PAGE} entries; what was done stays done."
    )
    progress = {
        "count": {"type": "integer", "minimum": 0},
        "examined": {
            "type": "integer",
            "minimum": 0,
            "description": "Registry entries this request examined",
        },
        "next_cursor": _NEXT_CURSOR,
    }
    # DELETE /dead's query: the filters, `all` and `cursor`, as one object so that a schema
    # can state the rule between them.
    delete_query = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **filters,
            "all": or_empty({"type": "boolean"}),
            "cursor": or_empty(cursor),
        },
        "allOf": [_NOT_ALL_WITH_A_FILTER, {"anyOf": [_ALL, _ANY_FILTER]}],
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
                "anyOf": [cursor, {"const": ""}, {"type": "null"}],
                "description": cursor_doc,
            },
            **{
                # '' and null count as not given.
                name: {"anyOf": [*filters[name]["anyOf"], {"type": "null"}], "description": doc}
                for name, doc in _FILTER_DOCS.items()
            },
        },
        # A retry of every dead job says so with `"all": true`; a dry run needs no filter.
        "allOf": [
            _NOT_ALL_WITH_A_FILTER,
            {"anyOf": [{"properties": {"dry_run": {"const": True}}}, _ALL, _ANY_FILTER]},
        ],
    }
    invalid_parameters = invalid("invalid_parameters: an invalid parameter; nothing changed.")
    return {
        "/dead": {
            "get": {
                "operationId": "listDead",
                "summary": "Dead jobs (failed, out of retries), newest failure first",
                "description": "Ordered by failed-registry score (failure time + failure_ttl). "
                f"Follow `next_cursor` until it is null: one request examines at most "
                f"{constants.DEAD_LIST_BUDGET} entries, so a sparse filter may answer fewer "
                "jobs than `limit`, even none.",
                "parameters": [
                    *(query_param(name, _FILTER_DOCS[name], filters[name]) for name in filters),
                    query_param(
                        "limit",
                        "Most jobs returned",
                        or_empty(
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": constants.LIST_MAX_LIMIT,
                                "default": constants.LIST_DEFAULT_LIMIT,
                            }
                        ),
                    ),
                    query_param("cursor", cursor_doc, or_empty(cursor)),
                ],
                "responses": {
                    "200": {
                        **response(
                            "A page of dead jobs",
                            _object(
                                jobs={"type": "array", "items": _DEAD_JOB},
                                next_cursor=_NEXT_CURSOR,
                            ),
                        ),
                        "links": {
                            "RetryDead": {"operationId": "retryDead", "parameters": dead_link},
                            "DeleteDead": {"operationId": "deleteDead", "parameters": dead_link},
                        },
                    },
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "delete": {
                "operationId": "deleteMatchingDead",
                "summary": "Delete the matching dead jobs (a filter, or all=true, is required)",
                "description": budget,
                "parameters": [
                    {
                        "name": "query",
                        "in": "query",
                        "style": "form",
                        "explode": True,
                        "required": True,
                        "description": "The filters (" + ", ".join(_FILTERS) + "), or `all=true`: "
                        "every dead job; and `cursor`: " + cursor_doc,
                        "schema": delete_query,
                    }
                ],
                "responses": {
                    "200": response("How many were deleted", _object(**progress)),
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            },
        },
        "/dead/retry": {
            "post": {
                "operationId": "retryMatchingDead",
                "summary": "Retry the matching dead jobs, or (dry_run) count them; retrying "
                'every one needs "all": true',
                "description": budget,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": retry_body}},
                },
                "responses": {
                    "200": response(
                        "How many were retried (or, in a dry run, match) among the entries "
                        "examined; a dry run also lists their ids "
                        f"(at most {constants.DEAD_DRY_RUN_IDS})",
                        {
                            **_object(dry_run={"type": "boolean"}, **progress),
                            # A dry run's answer only.
                            "properties": {
                                "dry_run": {"type": "boolean"},
                                **progress,
                                "ids": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ),
                    **BODY_ERRORS,
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/dead/{job_id}/retry": {
            "post": {
                "operationId": "retryDead",
                "summary": "Put a dead job back on its queue at once, as new; its history is kept",
                "parameters": [job_id_param()],
                "responses": {
                    "200": response(
                        "Queued",
                        _object(
                            id={"type": "string"},
                            queue={"type": "string"},
                            status={"const": "queued"},
                        ),
                    ),
                    "404": not_dead,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/dead/{job_id}": {
            "delete": {
                "operationId": "deleteDead",
                "summary": "Delete a dead job: its record, history and dead-letter entry",
                "parameters": [job_id_param()],
                "responses": {
                    "204": {"description": "Deleted"},
                    "404": not_dead,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
    }
