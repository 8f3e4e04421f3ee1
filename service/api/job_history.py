"""Job history over HTTP (MongoDB): GET /jobs, and GET /jobs/{id} once Redis has let go."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response

from service.api import params
from service.api.errors import ApiError, JSONResponse, Problems
from service.api.submit import MAX_TYPE_CHARS
from service.config import constants
from service.history.mongo import HISTORY_COLLECTION
from service.jobs import records

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


def _database(request: Request) -> AsyncDatabase[dict[str, Any]]:
    db: AsyncDatabase[dict[str, Any]] | None = request.app.state.mongo
    if db is None:
        raise ApiError(
            501,
            "history_disabled",
            "job history needs MongoDB: set MONGODB_URI to enable GET /jobs",
        )
    return db


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return records.utc_iso(value.replace(tzinfo=UTC).timestamp())
    return value


def _decode_cursor(raw: str | None, problems: Problems) -> tuple[datetime, str] | None:
    if raw is None:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        stamp, job_id = text.split("|")
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is not None and records.valid_id(job_id):
            # In UTC within years 1 to 9999, as MongoDB's driver must write it.
            return moment.astimezone(UTC), job_id
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        pass
    problems.append({"field": "cursor", "message": "not a cursor this API returned"})
    return None


def _encode_cursor(doc: dict[str, Any]) -> str:
    raw = f"{doc['updated_at'].replace(tzinfo=UTC).isoformat()}|{doc['_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def list_jobs(request: Request) -> Response:
    """History, newest change first: ?type=&status=&since=&until=&limit=&cursor=."""
    db = _database(request)
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


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(
        503,
        "history_unavailable",
        f"MongoDB is unavailable: {exc}",
        headers={"Retry-After": str(constants.RETRY_AFTER_SECONDS)},
    )
