"""Turning a request body into validated jobs: every problem found at once, or none enqueued."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from starlette.requests import Request

from service.api import dependencies
from service.api.errors import ApiError, Problems
from service.config import constants, queues
from service.config.queues import Priority
from service.config.settings import Settings
from service.jobs import records
from service.jobs.policy import Backoff
from service.jobs.registry import PayloadInvalid, Registry, UnknownJobType, validate_json

MAX_TYPE_CHARS = 100  # the longest name the registry allows
# Printable ASCII, as a header carries it (and without the spaces HTTP trims at either end).
IDEMPOTENCY_KEY = re.compile(r"[!-~]([ -~]{0,198}[!-~])?")


class JobRequest(BaseModel):
    """One job as a client submits it. Every option left out takes the job type's default."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=MAX_TYPE_CHARS)
    payload: Any = Field(default_factory=dict)
    priority: Priority | None = None
    delay: float | None = Field(default=None, ge=0, le=constants.MAX_SCHEDULE_SECONDS)
    run_at: AwareDatetime | None = None
    max_retries: int | None = Field(default=None, ge=0, le=25)
    backoff: Backoff | None = None
    timeout: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # At most MAX_RESULT_TTL and MAX_FAILURE_TTL: settings, checked by `parse_jobs`.
    result_ttl: int | None = Field(default=None, ge=1)
    failure_ttl: int | None = Field(default=None, ge=1)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=f"^{IDEMPOTENCY_KEY.pattern}$"
    )
    # Parents: job ids, or `$<index>` for an item of the same batch (see api/dependencies.py).
    depends_on: (
        list[Annotated[str, StringConstraints(pattern=dependencies.PARENT_PATTERN)]] | None
    ) = Field(default=None, min_length=1, max_length=constants.MAX_DEPENDENCIES)
    allow_failure: bool | None = None

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


OUT_OF_RANGE = (
    "integers must be within the signed 64-bit range"
    f" ({records.INT64.start} to {records.INT64.stop - 1})"
)
_Path = tuple[str | int, ...]


class _OutOfRange:
    """Stands for an integer outside records.INT64 in the exact parse."""


_OUT_OF_RANGE = _OutOfRange()


def _exact_int(literal: str) -> int | _OutOfRange:
    if len(literal.lstrip("-")) > 19:  # JSON has no leading zeros: too large, unconverted
        return _OUT_OF_RANGE
    value = int(literal)
    return value if value in records.INT64 else _OUT_OF_RANGE


def wide_integers(body: bytes) -> list[_Path]:
    """Where the JSON `body` holds integers outside records.INT64 (which MongoDB cannot store,
    and orjson reads as inexact floats), in document order; usually none, found at once."""
    if not records.may_hold_wide_integer(body):
        return []
    return list(_paths_to(_OUT_OF_RANGE, json.loads(body, parse_int=_exact_int)))


def _paths_to(marker: object, value: Any) -> Iterator[_Path]:
    """The paths of `marker` in `value` (iterative: the depth is already bounded, the stack
    need not be)."""
    stack: list[tuple[_Path, Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if node is marker:
            yield path
        elif isinstance(node, dict):
            stack += reversed([((*path, key), child) for key, child in node.items()])
        elif isinstance(node, list):
            stack += reversed([((*path, index), child) for index, child in enumerate(node)])


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
    if may_nest_too_deep(body) and not _nested_within(value, constants.MAX_JSON_DEPTH):
        message = f"the body is nested deeper than {constants.MAX_JSON_DEPTH} levels"
        raise ApiError(400, "malformed_json", message)
    return value


def may_nest_too_deep(body: bytes) -> bool:
    """Whether the JSON `body` may nest deeper than MAX_JSON_DEPTH: one with fewer brackets
    than that cannot, so most bodies skip the walk."""
    return body.count(b"[") + body.count(b"{") > constants.MAX_JSON_DEPTH


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


# The options bounded by a setting: (field, Settings attribute, variable).
CEILINGS = (
    ("result_ttl", "max_result_ttl", "MAX_RESULT_TTL"),
    ("failure_ttl", "max_failure_ttl", "MAX_FAILURE_TTL"),
)


def _beyond_limits(
    request: JobRequest, settings: Settings, where: str, now: float
) -> list[dict[str, Any]]:
    """What the request model cannot check alone: the operator's TTL ceilings, and a run_at
    no farther ahead than the longest delay (so it is a time RFC 3339 can write, and the
    job's hash expires some day)."""
    found = []
    for field, attribute, variable in CEILINGS:
        value, ceiling = getattr(request, field), getattr(settings, attribute)
        if value is not None and value > ceiling:
            message = f"Input should be at most {ceiling} seconds ({variable})"
            found.append({"field": f"{where}{field}", "message": message})
    farthest = now + constants.MAX_SCHEDULE_SECONDS
    if request.run_at is not None and request.run_at.timestamp() > farthest:
        message = "Input should be at most a year (365 days) ahead, as delay is"
        found.append({"field": f"{where}run_at", "message": message})
    return found


def _wide_per_item(body: bytes, batch: bool) -> dict[int, list[_Path]]:
    """wide_integers(body), by item (a batch's `jobs[i]`), each path from its item."""
    per_item: dict[int, list[_Path]] = {}
    for path in wide_integers(body):
        if batch:  # {"jobs": [...]} and nothing else: every path starts with ("jobs", i)
            index, path = int(path[1]), path[2:]
        else:
            index = 0
        per_item.setdefault(index, []).append(path)
    return per_item


# Generators, so that errors past those a reply lists are never read (see Problems.extend).
def _request_problems(where: str, exc: ValidationError) -> Iterator[dict[str, str]]:
    for e in exc.errors(include_url=False):
        yield {"field": _field(where, e["loc"]), "message": e["msg"]}


def _payload_problems(where: str, exc: PayloadInvalid) -> Iterator[dict[str, str]]:
    for e in exc.errors:
        yield {"field": f"{where}payload.{e['field']}".rstrip("."), "message": e["message"]}


def _extend(
    problems: Problems, more: Iterator[dict[str, str]], count: int, wide: list[str]
) -> None:
    """`count` errors for `problems`, but none of a field that holds an integer beyond 64
    bits: that one is named once, for that reason (the errors are read whole then: a rare
    body)."""
    if wide:
        kept = [problem for problem in more if problem["field"] not in wide]
        problems.extend(iter(kept), len(kept))
    else:
        problems.extend(more, count)


def parse_jobs(
    items: list[Any], registry: Registry, settings: Settings, *, batch: bool, body: bytes
) -> list[tuple[records.NewJob, JobRequest]]:
    """Validate every item against the registry and the settings' limits; raise one 422
    counting all the errors and listing the first of them (see `Problems`).

    `body`: the request body the items were read from, for what its parse lost (integers
    outside records.INT64, read as floats or kept too large to store)."""
    problems = Problems()
    parsed: list[tuple[records.NewJob, JobRequest]] = []
    unknown = False
    now = time.time()
    wide = _wide_per_item(body, batch)
    for index, item in enumerate(items):
        where = f"jobs[{index}]." if batch else ""
        found = problems.count
        request = spec = None
        wide_fields = [_field(where, path) for path in wide.get(index, ())]

        name = item.get("type") if isinstance(item, dict) else None
        plain = isinstance(item, dict) and item.keys() <= PLAIN_FIELDS
        if plain and isinstance(name, str) and name in registry:
            request = NO_OPTIONS  # a known type and a payload: no option to check
        else:
            try:
                request = validate_json(JobRequest, item)
            except ValidationError as exc:
                _extend(problems, _request_problems(where, exc), exc.error_count(), wide_fields)
            else:
                limits = _beyond_limits(request, settings, where, now)
                limits += dependencies.reference_problems(
                    request.depends_on or (), index, len(items), batch, where
                )
                _extend(problems, iter(limits), len(limits), wide_fields)
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
                _extend(problems, _payload_problems(where, exc), exc.count, wide_fields)
        for field in wide_fields:  # named once, for this reason, whatever else it broke
            problems.append({"field": field, "message": OUT_OF_RANGE})
        if problems.count > found or request is None or spec is None:
            continue
        backoff = request.backoff or spec.backoff
        job = records.NewJob(
            id=records.new_id(),
            type=spec.name,
            queue=queues.concrete(
                spec.queue or settings.queue_name, request.priority or spec.priority
            ),
            payload=item.get("payload", {}),  # as sent (the validated copy may differ: 5.0 is 5)
            timeout=request.timeout or spec.timeout,
            max_retries=spec.max_retries if request.max_retries is None else request.max_retries,
            backoff=backoff.to_json(),
            result_ttl=request.result_ttl or spec.result_ttl,
            failure_ttl=request.failure_ttl or spec.failure_ttl,
            run_at=request.run_at_epoch(now),
            depends_on=tuple(request.depends_on or ()),
            allow_failure=bool(request.allow_failure),
        )
        parsed.append((job, request))
    if problems:
        known = {"known_types": registry.names()} if unknown else None
        raise problems.error("invalid_job", "validation error(s)", details=known)
    linked = dependencies.link([job for job, _ in parsed])
    return [(job, request) for job, (_, request) in zip(linked, parsed, strict=True)]
