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
    JOB_ID_PATTERN,
)
from service.api.routes import resource
from service.api.submit import read_json
from service.config import constants, queues
from service.jobs import records
from service.store.dead_letters import DeadJob, DeadLetters, Filter, Position, Sweep

log = logging.getLogger("service.api")

FILTERS = ("type", "queue", "error", "since", "until")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_CHARS = {"type": 101, "queue": 200, "error": 200, "since": 64, "until": 64}


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
    query = _query(request, (*FILTERS, "limit", "cursor"), problems)
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
    known = ("dry_run", "all", "cursor", *FILTERS)
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
    query = _query(request, (*FILTERS, "all", "cursor"), problems)
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
        message = f"give at least one filter ({', '.join(FILTERS)}), or {flag}"
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
    for name in FILTERS:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            problems.append({"field": name, "message": "expected a string"})
        elif value and len(value) > MAX_CHARS[name]:
            problems.append({"field": name, "message": f"at most {MAX_CHARS[name]} characters"})
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
