"""Turning a request body into validated jobs: every problem found at once, or none enqueued."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from service import constants, jobs, queues
from service.api.errors import ApiError, Problems
from service.policy import Backoff
from service.queues import Priority
from service.registry import PayloadInvalid, Registry, UnknownJobType, validate_json

MAX_DELAY_SECONDS = 365 * 24 * 3600
MAX_TTL_SECONDS = 365 * 24 * 3600
MAX_TYPE_CHARS = 100  # the longest name the registry allows
# Printable ASCII, as a header carries it (and without the spaces HTTP trims at either end).
IDEMPOTENCY_KEY = re.compile(r"[!-~]([ -~]{0,198}[!-~])?")


class JobRequest(BaseModel):
    """One job as a client submits it. Every option left out takes the job type's default."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=MAX_TYPE_CHARS)
    payload: Any = Field(default_factory=dict)
    priority: Priority | None = None
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS)
    run_at: AwareDatetime | None = None
    max_retries: int | None = Field(default=None, ge=0, le=25)
    backoff: Backoff | None = None
    timeout: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    result_ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)
    failure_ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=f"^{IDEMPOTENCY_KEY.pattern}$"
    )

    @model_validator(mode="after")
    def _one_schedule(self) -> JobRequest:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")
        return self

    def run_at_epoch(self, now: float) -> float | None:
        if self.delay:
            return now + self.delay
        if self.run_at is not None and self.run_at.timestamp() > now:
            return self.run_at.timestamp()
        return None  # due now (or in the past): queued at once


# Most jobs give only these: every option then takes the job type's default.
PLAIN_FIELDS = frozenset(("type", "payload"))
NO_OPTIONS = JobRequest.model_construct(type="")  # a request that sets no option


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
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    # Fewer brackets than the limit cannot nest deeper than it: most bodies skip the walk.
    deep = body.count(b"[") + body.count(b"{") > constants.MAX_JSON_DEPTH
    if deep and not _nested_within(value, constants.MAX_JSON_DEPTH):
        message = f"the body is nested deeper than {constants.MAX_JSON_DEPTH} levels"
        raise ApiError(400, "malformed_json", message)
    return value


def _nested_within(value: Any, depth: int) -> bool:
    """No array or object in `value` lies deeper than `depth` levels (iterative, so a deep
    document cannot exhaust the stack)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, level = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                if level >= depth:
                    return False
                stack.append((child, level + 1))
    return True


def _field(where: str, loc: tuple[int | str, ...]) -> str:
    return where + ".".join(map(str, loc)) if loc else where.rstrip(".") or "body"


# Generators, so that errors past those a reply lists are never read (see Problems.extend).
def _request_problems(where: str, exc: ValidationError) -> Iterator[dict[str, str]]:
    for e in exc.errors(include_url=False):
        yield {"field": _field(where, e["loc"]), "message": e["msg"]}


def _payload_problems(where: str, exc: PayloadInvalid) -> Iterator[dict[str, str]]:
    for e in exc.errors:
        yield {"field": f"{where}payload.{e['field']}".rstrip("."), "message": e["message"]}


def parse_jobs(
    items: list[Any], registry: Registry, default_queue: str, *, batch: bool
) -> list[tuple[jobs.NewJob, JobRequest]]:
    """Validate every item against the registry; raise one 422 counting all the errors and
    listing the first of them (see `Problems`)."""
    problems = Problems()
    parsed: list[tuple[jobs.NewJob, JobRequest]] = []
    unknown = False
    now = time.time()
    for index, item in enumerate(items):
        where = f"jobs[{index}]." if batch else ""
        found = problems.count
        request = spec = None
        name = item.get("type") if isinstance(item, dict) else None
        plain = isinstance(item, dict) and item.keys() <= PLAIN_FIELDS
        if plain and isinstance(name, str) and name in registry:
            request = NO_OPTIONS  # a known type and a payload: no option to check
        else:
            try:
                request = validate_json(JobRequest, item)
            except ValidationError as exc:
                problems.extend(_request_problems(where, exc), exc.error_count())
        # The payload is checked even when the options are not; a name too long to be a job
        # type is already an error above, and is not echoed back as an unknown one.
        if isinstance(name, str) and len(name) <= MAX_TYPE_CHARS:
            try:
                spec = registry.get(name)
                spec.validate(item.get("payload", {}), strict=True)
            except UnknownJobType:
                unknown = True
                problems.append({"field": f"{where}type", "message": f"unknown job type {name!r}"})
            except PayloadInvalid as exc:
                problems.extend(_payload_problems(where, exc), exc.count)
        if problems.count > found or request is None or spec is None:
            continue
        backoff = request.backoff or spec.backoff
        job = jobs.NewJob(
            id=jobs.new_id(),
            type=spec.name,
            queue=queues.concrete(spec.queue or default_queue, request.priority or spec.priority),
            payload=item.get("payload", {}),  # as sent (the validated copy may differ: 5.0 is 5)
            timeout=request.timeout or spec.timeout,
            max_retries=spec.max_retries if request.max_retries is None else request.max_retries,
            backoff=backoff.to_json(),
            result_ttl=request.result_ttl or spec.result_ttl,
            failure_ttl=request.failure_ttl or spec.failure_ttl,
            run_at=request.run_at_epoch(now),
        )
        parsed.append((job, request))
    if problems:
        known = {"known_types": registry.names()} if unknown else None
        raise problems.error("invalid_job", "validation error(s)", details=known)
    return parsed
