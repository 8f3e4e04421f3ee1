"""Job history over HTTP (MongoDB): GET /jobs, and GET /jobs/{id} once Redis has let go."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response

from service.api import params
from service.api.errors import ApiError, JSONResponse, Problems, retry_later
from service.api.openapi_parts import (
    JOB_ID_PATTERN,
    invalid,
    or_empty,
    query_param,
    response,
)
from service.api.submit import MAX_TYPE_CHARS
from service.config import constants
from service.history.mongo import HISTORY_COLLECTION
from service.jobs import records

MAX_FILTER_CHARS = 200  # longest queue or error text a search takes
STATUSES = ("queued", "scheduled", "started", "finished", "failed", "canceled")
_LIST_FIELDS = (
    "type",
    "queue",
    "status",
    "attempts",
    "worker",
    "error",
    "created_at",
    "updated_at",
)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return records.utc_iso(value.replace(tzinfo=UTC).timestamp())
    return value


# A cursor is a position in the listing's order: `<updated_at in epoch microseconds>_<id>`.
# Any such string is a position (one past the end of time reads as the newest), so the
# OpenAPI pattern is the whole rule.
CURSOR_PATTERN = r"^[0-9]{1,18}_" + JOB_ID_PATTERN[1:]
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def _decode_cursor(raw: str | None, problems: Problems) -> tuple[datetime, str] | None:
    micros, job_id = params.cursor(raw, _CURSOR, problems)
    if not job_id:
        return None
    return _EPOCH + timedelta(microseconds=min(int(micros), _LAST_MICROS)), job_id


def _encode_cursor(doc: dict[str, Any]) -> str:
    micros = (doc["updated_at"].replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{doc['_id']}"


async def list_jobs(request: Request) -> Response:
    """History, newest change first: ?type=&status=&queue=&error=&since=&until=&limit=&cursor=.
    `error` matches a substring of the error, case-insensitively."""
    db: AsyncDatabase[dict[str, Any]] = request.app.state.mongo  # routed only with MongoDB
    given = {k: v for k, v in request.query_params.items() if v}
    problems = Problems()
    query: dict[str, Any] = {}
    if "type" in given:
        if len(given["type"]) > MAX_TYPE_CHARS:  # longer than any job type: matches none
            problems.append({"field": "type", "message": f"at most {MAX_TYPE_CHARS} characters"})
        query["type"] = given["type"]
    if "status" in given:
        if given["status"] not in STATUSES:
            problems.append({"field": "status", "message": f"one of {', '.join(STATUSES)}"})
        query["status"] = given["status"]
    if "queue" in given:
        if len(given["queue"]) > MAX_FILTER_CHARS:
            problems.append({"field": "queue", "message": f"at most {MAX_FILTER_CHARS} characters"})
        query["queue"] = given["queue"]
    if "error" in given:
        if len(given["error"]) > MAX_FILTER_CHARS:
            problems.append({"field": "error", "message": f"at most {MAX_FILTER_CHARS} characters"})
        query["error"] = {"$regex": re.escape(given["error"]), "$options": "i"}
    window = {}
    for name, op in (("since", "$gte"), ("until", "$lte")):
        moment = params.instant(name, given.get(name), problems)
        if moment is not None:
            window[op] = datetime.fromtimestamp(moment, UTC)
    if window:
        query["updated_at"] = window
    limit = params.limit(given.get("limit"), problems)
    after = _decode_cursor(given.get("cursor"), problems)
    if problems:
        raise problems.error("invalid_parameters", "invalid parameter(s)")
    if after is not None:
        stamp, last_id = after
        query["$or"] = [
            {"updated_at": {"$lt": stamp}},
            {"updated_at": stamp, "_id": {"$lt": last_id}},
        ]
    try:
        cursor = db[HISTORY_COLLECTION].find(query, {f: 1 for f in _LIST_FIELDS})
        docs = await cursor.sort([("updated_at", -1), ("_id", -1)]).limit(limit).to_list()
    except PyMongoError as exc:
        raise _unavailable(exc) from None
    listed = [{"id": d["_id"], **{f: _iso(d.get(f)) for f in _LIST_FIELDS}} for d in docs]
    next_cursor = _encode_cursor(docs[-1]) if len(docs) == limit else None
    return JSONResponse({"jobs": listed, "next_cursor": next_cursor})


async def from_history(request: Request, job_id: str) -> dict[str, Any] | None:
    """The job as MongoDB remembers it (after Redis let it expire), or None."""
    db: AsyncDatabase[dict[str, Any]] | None = request.app.state.mongo
    if db is None:
        return None
    try:
        doc = await db[HISTORY_COLLECTION].find_one({"_id": job_id})
    except PyMongoError:
        return None  # the 404 / 410 that follows is still true of Redis
    if doc is None:
        return None
    events = [{k: _iso(v) for k, v in e.items()} for e in doc.pop("events", [])]
    view = {"id": doc.pop("_id"), **{k: _iso(v) for k, v in doc.items()}}
    return {**view, "events": events, "source": "history"}


def openapi_operation() -> dict[str, Any]:
    """GET /jobs in the OpenAPI document."""
    parameters: list[tuple[str, dict[str, Any], str]] = [
        ("type", {"type": "string", "maxLength": MAX_TYPE_CHARS}, "a job type"),
        ("status", {"enum": list(STATUSES)}, "the job's latest status"),
        ("queue", {"type": "string", "maxLength": MAX_FILTER_CHARS}, "a queue (RQ's name)"),
        (
            "error",
            {"type": "string", "maxLength": MAX_FILTER_CHARS},
            "text the error contains (any case)",
        ),
        ("since", {"type": "string", "format": "date-time"}, "last change at or after"),
        ("until", {"type": "string", "format": "date-time"}, "last change at or before"),
        (
            "limit",
            {"type": "integer", "minimum": 1, "maximum": constants.LIST_MAX_LIMIT},
            f"default {constants.LIST_DEFAULT_LIMIT}",
        ),
        (
            "cursor",
            {"type": "string", "pattern": CURSOR_PATTERN},
            "next_cursor of the previous page",
        ),
    ]
    page = {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": {"type": "object"}},
            "next_cursor": {"type": ["string", "null"], "pattern": CURSOR_PATTERN},
        },
    }
    return {
        "operationId": "listJobs",
        "summary": "Job history (MongoDB), newest change first; only with MONGODB_URI",
        "parameters": [
            query_param(name, description, or_empty(schema))
            for name, schema, description in parameters
        ],
        "responses": {
            "200": response("`{jobs, next_cursor}`", page),
            "422": invalid("invalid_parameters: a bad parameter."),
            "503": response("history_unavailable: MongoDB unavailable; see Retry-After"),
        },
    }


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(
        503,
        "history_unavailable",
        f"MongoDB is unavailable: {exc}",
        headers=retry_later(),
    )
