"""Turning a request body into validated jobs: every problem found at once, or none enqueued."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from service import jobs
from service.api.errors import ApiError
from service.registry import PayloadInvalid, Registry, UnknownJobType

JOB_FIELDS = {"type", "payload"}


async def read_json(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as application/json",
            {"content_type": media_type or None},
        )
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def parse_jobs(
    items: list[Any], registry: Registry, default_queue: str, *, batch: bool
) -> list[jobs.NewJob]:
    """Validate every item against the registry; raise one 422 listing all the errors."""
    errors: list[dict[str, Any]] = []
    parsed: list[jobs.NewJob] = []
    unknown = False
    for index, item in enumerate(items):
        where = f"jobs[{index}]." if batch else ""
        if not isinstance(item, dict):
            errors.append({"field": where.rstrip(".") or "body", "message": "expected an object"})
            continue
        for extra in sorted(set(item) - JOB_FIELDS):
            errors.append({"field": f"{where}{extra}", "message": "unknown field"})
        name = item.get("type")
        if not isinstance(name, str):
            errors.append({"field": f"{where}type", "message": "required: a job type name"})
            continue
        try:
            spec = registry.get(name)
            spec.validate(item.get("payload", {}))
        except UnknownJobType:
            unknown = True
            errors.append({"field": f"{where}type", "message": f"unknown job type {name!r}"})
            continue
        except PayloadInvalid as exc:
            errors += [
                {"field": f"{where}payload.{e['field']}".rstrip("."), "message": e["message"]}
                for e in exc.errors
            ]
            continue
        parsed.append(
            jobs.NewJob(
                jobs.new_id(),
                name,
                spec.queue or default_queue,
                item.get("payload", {}),
                spec.timeout,
                spec.max_retries,
            )
        )
    if errors:
        details: dict[str, Any] = {"errors": errors}
        if unknown:
            details["known_types"] = registry.names()
        raise ApiError(422, "invalid_job", f"{len(errors)} validation error(s)", details)
    return parsed
