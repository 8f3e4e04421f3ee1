"""Schedules over HTTP: list, read, create, change, pause, resume and delete them, and preview
their next fire times.

A schedule's id is `<job type>/<name>`, so its URL is `/schedules/{job_type}/{name}`. One
created here is stored with `origin` "api": the worker containers' clean-up of the schedules
their code no longer declares leaves it alone. One the code declares (`origin` "code") can be
paused and resumed here (the pause outlives its re-declaration, and a deploy), but not changed
or deleted (409): the code would put it back within a minute; change the code instead.

A paused schedule fires nothing. On resume, a fire time that passed meanwhile is due at once,
and the schedule's misfire policy decides what it publishes (`fire_once`: one job; `skip`:
none; `catch_up`: the recent ones), as after an outage.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import zoneinfo
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api import params
from service.api.errors import ApiError, JSONResponse, Problems, clip
from service.api.routes import resource
from service.api.submit import OUT_OF_RANGE, read_json, wide_integers
from service.config import constants
from service.jobs import schedule
from service.jobs.registry import NAME_PATTERN, PayloadInvalid, Registry
from service.jobs.schedule import Schedule, ScheduleInvalid
from service.store.schedules import Book, Definition, Stored

log = logging.getLogger("service.api")

PREVIEW_COUNT = 10  # fire times GET .../preview answers
TYPE_PATTERN = NAME_PATTERN.pattern
# A schedule's name (schedule.NAME), less `.` and `..`: clients drop those from a URL's path.
SCHEDULE_NAME_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}$"
# Five fields of the characters cron expressions use; cronsim checks the rest (ranges, names).
CRON_PATTERN = r"^[0-9A-Za-z*/,?#-]{1,100}( [0-9A-Za-z*/,?#-]{1,100}){4}$"
TIMEZONES = frozenset(zoneinfo.available_timezones())
# The fields of a schedule's timing, policy and payload: what POST takes besides type and name,
# and what PATCH may change.
FIELDS = ("cron", "every", "timezone", "misfire", "catch_up_max", "grace", "payload")
_NAME = re.compile(SCHEDULE_NAME_PATTERN)
_CRON = re.compile(CRON_PATTERN)


def _book(request: Request) -> Book:
    book: Book = request.app.state.schedules
    return book


def _path_id(request: Request) -> str:
    """The schedule the path names; a 404 for one no schedule can have."""
    job_type, name = request.path_params["job_type"], request.path_params["name"]
    if not NAME_PATTERN.fullmatch(job_type) or not _NAME.fullmatch(name):
        raise _not_found(f"{job_type}/{name}")
    return f"{job_type}/{name}"


def _not_found(schedule_id: str) -> ApiError:
    message = f"no schedule with id {clip(schedule_id)!r}"
    return ApiError(404, "schedule_not_found", message, {"id": clip(schedule_id)})


def _in_code(schedule_id: str, action: str) -> ApiError:
    message = (
        f"schedule {schedule_id!r} is declared in code (@job(schedule=...)): it cannot be "
        f"{action} through the API, the code would put it back; change the code, or pause it"
    )
    return ApiError(409, "schedule_in_code", message, {"id": schedule_id})


def _unreadable(schedule_id: str) -> ApiError:
    message = (
        f"schedule {schedule_id!r} was stored by another version of this service, which this "
        "one cannot read"
    )
    return ApiError(409, "schedule_unreadable", message, {"id": schedule_id})


def _instant(moment: int | None, zone: ZoneInfo) -> str | None:
    """Epoch seconds as RFC 3339, in the schedule's time zone (its offset shown)."""
    return None if moment is None else datetime.fromtimestamp(moment, zone).isoformat()


def view(stored: Stored) -> dict[str, Any]:
    """A schedule as the API shows it."""
    job_type, name = stored.id.split("/", 1)
    found = stored.definition
    if found is None:
        raise _unreadable(stored.id)
    zone = ZoneInfo(found.schedule.timezone)
    return {
        "id": stored.id,
        "type": job_type,
        "name": name,
        "origin": stored.origin,
        **found.schedule.when(),
        "payload": found.schedule.payload,
        "paused": stored.paused,
        "next_fire": None if stored.paused else _instant(stored.next, zone),
        "last_fire": _instant(stored.last, zone),
        "fired": stored.fired,
        "missed": stored.missed,
    }


# --- Validation: every problem found at once, each naming its field ---------------------------
def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _check_fields(body: dict[str, Any], problems: Problems) -> None:
    """The timing and policy fields `body` gives, each checked as the document states them."""
    if "cron" in body and "every" in body:
        problems.append({"field": "every", "message": "give either cron or every, not both"})
    cron = body.get("cron")
    if "cron" in body and not (isinstance(cron, str) and _CRON.fullmatch(cron)):
        message = "expected a cron expression of five fields, separated by one space"
        problems.append({"field": "cron", "message": message})
    elif isinstance(cron, str):
        try:  # its fields' ranges and names, reported with the other fields' problems
            Schedule(cron=cron)
        except ScheduleInvalid as exc:
            problems.append({"field": "cron", "message": str(exc)})
    every = _integer(body.get("every"))
    if "every" in body and (every is None or not 1 <= every <= constants.SCHEDULE_EVERY_MAX):
        message = f"expected whole seconds, 1-{constants.SCHEDULE_EVERY_MAX}"
        problems.append({"field": "every", "message": message})
    zone = body.get("timezone")
    if "timezone" in body and not (isinstance(zone, str) and zone in TIMEZONES):
        message = "expected an IANA time zone name, such as Europe/Lisbon"
        problems.append({"field": "timezone", "message": message})
    misfire = body.get("misfire")
    if "misfire" in body and not (
        isinstance(misfire, str) and misfire in schedule.MISFIRE_POLICIES
    ):
        message = f"expected one of {', '.join(schedule.MISFIRE_POLICIES)}"
        problems.append({"field": "misfire", "message": message})
    limits = {"catch_up_max": (1, constants.SCHEDULE_CATCH_UP_MAX)}
    limits["grace"] = (0, constants.SCHEDULE_GRACE_MAX)
    for field, (low, high) in limits.items():
        number = _integer(body.get(field))
        if field in body and (number is None or not low <= number <= high):
            problems.append({"field": field, "message": f"expected a whole number {low}-{high}"})
    if "payload" in body and not isinstance(body["payload"], dict):
        problems.append({"field": "payload", "message": "expected an object"})


def _wide(body: bytes, problems: Problems) -> None:
    for path in wide_integers(body):
        field = ".".join(str(part) for part in path)
        problems.append({"field": field, "message": OUT_OF_RANGE})


def _check_payload(registry: Registry, job_type: str, payload: Any, problems: Problems) -> None:
    try:
        registry.get(job_type).validate(payload, strict=True)
    except PayloadInvalid as exc:
        for e in exc.errors:
            problems.append({"field": f"payload.{e['field']}".rstrip("."), "message": e["message"]})


def _schedule(fields: dict[str, Any], name: str | None, problems: Problems) -> Schedule | None:
    """The Schedule `fields` describe; None, with the problem noted, when it cannot run."""
    given: dict[str, Any] = {
        k: _integer(v) if k in ("every", "catch_up_max", "grace") else v for k, v in fields.items()
    }
    try:
        return Schedule(**given, name=name)
    except ScheduleInvalid as exc:
        field = "cron" if fields.get("cron") is not None else "schedule"
        problems.append({"field": field, "message": str(exc)})
        return None


def _invalid(problems: Problems) -> ApiError:
    return problems.error("invalid_schedule", "validation error(s); nothing was changed")


async def _body(request: Request) -> tuple[dict[str, Any], Problems]:
    body = await read_json(request)
    problems = Problems()
    if not isinstance(body, dict):
        problems.append({"field": "", "message": "expected a JSON object"})
        raise _invalid(problems)
    _wide(await request.body(), problems)
    return body, problems


# --- The endpoints ------------------------------------------------------------------------------
# A cursor is a place in the listing's order: `<next fire time, or inf while paused>_<id>`.
# Any such string is a place, so the OpenAPI pattern is the whole rule.
CURSOR_PATTERN = r"^(inf|[0-9]{1,12})_[a-z0-9][a-z0-9_.-]{0,99}/[A-Za-z0-9_.-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_LIST_PARAMETERS = ("limit", "cursor")


async def list_schedules(request: Request) -> Response:
    problems = Problems()
    given: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in _LIST_PARAMETERS:
            known = ", ".join(_LIST_PARAMETERS)
            problems.append({"field": name, "message": f"unknown parameter; known: {known}"})
        elif name in given:
            problems.append({"field": name, "message": "given more than once"})
        else:
            given[name] = value
    limit = params.limit(given.get("limit") or None, problems)
    score, after = params.cursor(given.get("cursor") or None, _CURSOR, problems)
    if problems:
        raise problems.error("invalid_parameters", "invalid parameter(s)")
    found, position = await _book(request).page(limit, (float(score), after) if after else None)
    # One this version cannot read is left out: GET of its id says why (409).
    shown = [view(one) for one in found if one.definition is not None]
    next_cursor = None if position is None else f"{_score(position[0])}_{position[1]}"
    return JSONResponse({"schedules": shown, "next_cursor": next_cursor})


def _score(score: float) -> str:
    return "inf" if score == float("inf") else str(int(score))


async def create_schedule(request: Request) -> Response:
    registry: Registry = request.app.state.registry
    body, problems = await _body(request)
    for field in body.keys() - {"type", "name", *FIELDS}:
        problems.append({"field": clip(field), "message": "unknown field"})
    job_type, name = body.get("type"), body.get("name")
    if not isinstance(job_type, str) or job_type not in registry:
        known = ", ".join(registry.names())
        problems.append({"field": "type", "message": f"expected a job type: one of {known}"})
        job_type = None
    if "name" in body and not (isinstance(name, str) and _NAME.fullmatch(name)):
        message = f"expected a name matching {SCHEDULE_NAME_PATTERN}"
        problems.append({"field": "name", "message": message})
    if "cron" not in body and "every" not in body:
        problems.append({"field": "cron", "message": "give either cron or every"})
    _check_fields(body, problems)
    if job_type is not None and isinstance(body.get("payload", {}), dict):
        _check_payload(registry, job_type, body.get("payload", {}), problems)
    if problems:
        raise _invalid(problems)
    fields = {k: body[k] for k in FIELDS if k in body}
    declared = _schedule(fields, name, problems)
    if declared is None or job_type is None:
        raise _invalid(problems)
    if name is None:  # named by a digest of what it is: the same request makes the same id
        declared = _schedule(fields, declared.key(), problems)
        assert declared is not None
    settings = request.app.state.settings
    definition = Definition.of(registry.get(job_type), declared, settings.queue_name)
    if await _book(request).create(definition, time.time()) == "exists":
        message = f"a schedule with id {definition.id!r} exists; give another name"
        raise ApiError(409, "schedule_exists", message, {"id": definition.id})
    log.info("schedule %s created", definition.id)
    return JSONResponse(await _shown(request, definition.id), 201)


async def _shown(request: Request, schedule_id: str) -> dict[str, Any]:
    stored = await _book(request).get(schedule_id)
    if stored is None:  # deleted since: a race with another client
        raise _not_found(schedule_id)
    return view(stored)


async def get_schedule(request: Request) -> Response:
    return JSONResponse(await _shown(request, _path_id(request)))


async def change_schedule(request: Request) -> Response:
    schedule_id = _path_id(request)
    body, problems = await _body(request)
    for field in body.keys() - set(FIELDS):
        problems.append({"field": clip(field), "message": "unknown field (or not changeable)"})
    _check_fields(body, problems)
    book = _book(request)
    stored = await book.get(schedule_id)
    if stored is None:
        raise _not_found(schedule_id)
    if stored.origin == "code":
        raise _in_code(schedule_id, "changed")
    if stored.definition is None:
        raise _unreadable(schedule_id)
    registry: Registry = request.app.state.registry
    job_type = stored.definition.type
    if job_type not in registry:
        message = f"job type {job_type!r} is not in this API's registry"
        problems.append({"field": "type", "message": message})
    elif isinstance(body.get("payload"), dict):
        _check_payload(registry, job_type, body["payload"], problems)
    if problems:
        raise _invalid(problems)
    current = stored.definition.schedule
    fields: dict[str, Any] = {**current.when(), "payload": current.payload}
    if "cron" in body:
        fields["every"] = None
    if "every" in body:
        fields["cron"] = None
    fields.update((k, body[k]) for k in FIELDS if k in body)
    changed = _schedule(fields, current.name, problems)
    if changed is None:
        raise _invalid(problems)
    settings = request.app.state.settings
    definition = Definition.of(registry.get(job_type), changed, settings.queue_name)
    answer = await book.update(definition, time.time())
    if answer == "missing":
        raise _not_found(schedule_id)
    if answer == "code":
        raise _in_code(schedule_id, "changed")
    log.info("schedule %s changed", schedule_id)
    return JSONResponse(await _shown(request, schedule_id))


async def delete_schedule(request: Request) -> Response:
    schedule_id = _path_id(request)
    answer = await _book(request).delete(schedule_id)
    if answer == "missing":
        raise _not_found(schedule_id)
    if answer == "code":
        raise _in_code(schedule_id, "deleted")
    log.info("schedule %s deleted", schedule_id)
    return Response(status_code=204)


async def _set_paused(request: Request, paused: bool) -> Response:
    schedule_id = _path_id(request)
    if not await _book(request).set_paused(schedule_id, paused):
        raise _not_found(schedule_id)
    log.info("schedule %s %s", schedule_id, "paused" if paused else "resumed")
    return JSONResponse(await _shown(request, schedule_id))


async def pause_schedule(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume_schedule(request: Request) -> Response:
    return await _set_paused(request, False)


async def preview_schedule(request: Request) -> Response:
    schedule_id = _path_id(request)
    stored = await _book(request).get(schedule_id)
    if stored is None:
        raise _not_found(schedule_id)
    if stored.definition is None:
        raise _unreadable(schedule_id)
    declared = stored.definition.schedule
    zone = ZoneInfo(declared.timezone)
    times = itertools.islice(schedule.fire_times(declared, time.time()), PREVIEW_COUNT)
    return JSONResponse(
        {
            "id": stored.id,
            "timezone": declared.timezone,
            "paused": stored.paused,
            "fire_times": [_instant(moment, zone) for moment in times],
        }
    )


routes: list[Route] = [
    resource("/schedules", {"GET": list_schedules, "POST": create_schedule}),
    resource(
        "/schedules/{job_type}/{name}",
        {"GET": get_schedule, "PATCH": change_schedule, "DELETE": delete_schedule},
    ),
    resource("/schedules/{job_type}/{name}/pause", {"POST": pause_schedule}),
    resource("/schedules/{job_type}/{name}/resume", {"POST": resume_schedule}),
    resource("/schedules/{job_type}/{name}/preview", {"GET": preview_schedule}),
]
