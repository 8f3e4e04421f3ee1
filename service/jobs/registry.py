"""The one table of job types: the API validates with it, the worker dispatches with it.

A job type is registered once, with its handler, payload schema and policies:

    from service import job

    class Welcome(BaseModel):
        to: EmailStr

    @job("email.welcome", payload=Welcome, timeout=30, max_retries=3)
    def welcome(payload: Welcome, ctx: JobContext) -> dict[str, str]:
        ...

The payload model may also be named by import string, `payload="myapp.models:Welcome"`: it is
imported the first time it is needed. A worker process imports pydantic (megabytes per
process) only for a payload model it uses: one that runs only job types without a payload
(`EmptyPayload`, not a pydantic model) never does.

Teams add their own modules through HANDLER_MODULES, without editing this package.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import itertools
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import orjson

from service.config import constants, queues
from service.config.queues import Priority
from service.jobs.context import AsyncJobContext, JobContext
from service.jobs.limit import Limit, LimitInvalid
from service.jobs.policy import Backoff
from service.jobs.schedule import Schedule

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

DEFAULT_BACKOFF = Backoff()

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
MODEL_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # an import string: "module:Model"


class Handler(Protocol):
    """A job handler: takes the validated payload and the job's context, returns JSON data."""

    def __call__(self, payload: Any, ctx: JobContext, /) -> Any: ...


class AsyncHandler(Protocol):
    """An `async def` handler: runs on its worker process's event loop, beside up to
    WORKER_CONCURRENCY others; its context holds asyncio clients (AsyncJobContext)."""

    def __call__(self, payload: Any, ctx: AsyncJobContext, /) -> Awaitable[Any]: ...


H = TypeVar("H", bound=Callable[..., Any])


class EmptyPayload:
    """The payload of a job type that takes none: `{}`.

    Not a pydantic model: job types without a payload need no pydantic in the worker.
    """

    __slots__ = ()
    # As pydantic describes a model without fields that forbids extra ones.
    SCHEMA: ClassVar[dict[str, Any]] = {
        "additionalProperties": False,
        "description": "The payload of a job type that takes none: `{}`.",
        "properties": {},
        "title": "EmptyPayload",
        "type": "object",
    }

    def __repr__(self) -> str:
        return "EmptyPayload()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmptyPayload)

    def __hash__(self) -> int:
        return hash(EmptyPayload)

    def model_dump(self) -> dict[str, Any]:
        """`{}`, as from a pydantic model."""
        return {}

    @classmethod
    def validate(cls, payload: Any) -> EmptyPayload:
        """`{}` and nothing else; the errors read as pydantic's for JSON input."""
        if not isinstance(payload, dict):
            raise PayloadInvalid([{"field": "payload", "message": "Input should be an object"}])
        if payload:
            extra = "Extra inputs are not permitted"
            keys = itertools.islice(payload, constants.LISTED_ERRORS)
            raise PayloadInvalid(
                [{"field": str(key), "message": extra} for key in keys], len(payload)
            )
        return cls()


class UnknownJobType(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown job type {name!r}")
        self.name = name
        self.known = known


class TtlAboveCeiling(ValueError):
    """Job types registered with a TTL above the operator's ceiling; `problems` names each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class PayloadInvalid(ValueError):
    """The payload failed its schema with `count` field errors; `errors` lists the first
    LISTED_ERRORS (`{"field", "message"}`), read from pydantic's only when first asked for: a
    batch of a thousand invalid payloads lists the errors of the first few (as a reply does,
    see service/api/errors.py) and only counts the others."""

    def __init__(
        self, errors: list[dict[str, Any]] | ValidationError, count: int | None = None
    ) -> None:
        self._source = errors
        if count is None:
            count = len(errors) if isinstance(errors, list) else errors.error_count()
        self.count = count
        super().__init__(f"{count} payload error(s)")

    @functools.cached_property
    def errors(self) -> list[dict[str, Any]]:
        source = self._source
        if isinstance(source, list):
            return source[: constants.LISTED_ERRORS]
        return [
            {"field": ".".join(map(str, e["loc"])) or "payload", "message": e["msg"]}
            for e in source.errors(include_url=False)[: constants.LISTED_ERRORS]
        ]


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    handler: Handler | AsyncHandler
    payload: type[BaseModel] | type[EmptyPayload] | str  # a str: "module:Model", see model()
    queue: str | None  # None: the QUEUE_NAME queue
    timeout: int  # whole seconds (RQ's format); the job is stopped and failed past it
    max_retries: int  # re-runs after a failure, as in RQ's Retry(max=...)
    isolated: bool  # run each job in a forked child, for handlers that leak or crash
    backoff: Backoff = DEFAULT_BACKOFF  # the wait before each retry
    priority: Priority = "default"
    result_ttl: int = constants.RESULT_TTL  # seconds a finished job and its result are kept
    failure_ttl: int = constants.FAILURE_TTL  # seconds a failed (dead) job is kept
    is_async: bool = False  # an `async def` handler: run on the event loop, not in a thread
    # The TTLs its registration gave ("result_ttl", "failure_ttl"); the others follow the
    # defaults, lowered to the operator's ceilings (see `Registry.within`).
    given_ttls: frozenset[str] = frozenset()
    schedules: tuple[Schedule, ...] = ()  # when it runs by itself (service/jobs/schedule.py)
    limit: Limit | None = None  # its rate and concurrency limits (service/jobs/limit.py)

    def model(self) -> type[BaseModel] | type[EmptyPayload]:
        """The payload model, imported now (once) if named by an import string."""
        return _import_model(self.payload) if isinstance(self.payload, str) else self.payload

    def json_schema(self) -> dict[str, Any]:
        model = self.model()
        if issubclass(model, EmptyPayload):
            return EmptyPayload.SCHEMA
        return model.model_json_schema()

    def validate(self, payload: Any, *, strict: bool = False) -> BaseModel | EmptyPayload:
        """The payload as its model; `strict`: as the API takes it (see `validate_json`)."""
        model = self.model()
        if issubclass(model, EmptyPayload):
            return EmptyPayload.validate(payload)
        from pydantic import ValidationError  # imported already, with the model

        try:
            if strict:
                return validate_json(model, payload)
            return model.model_validate(payload)
        except ValidationError as exc:
            raise PayloadInvalid(exc) from None


M = TypeVar("M", bound="BaseModel")


def validate_json(model: type[M], data: Any) -> M:
    """Validate parsed JSON as the model's JSON Schema (and so the OpenAPI document) reads it:
    strictly typed, so "5" or true is no number and 1 no boolean, where pydantic's lax mode
    would convert them; yet an integral float (5.0) is an integer, as in JSON Schema."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(orjson.dumps(data), strict=True)
    except ValidationError:
        # Looked for in the data rather than in pydantic's errors: a large payload's error list
        # is long to build.
        if not _any_integral_float(data):
            raise
    return model.model_validate_json(orjson.dumps(_integral_floats_as_ints(data)), strict=True)


def _integral_float(value: Any) -> bool:
    """5.0, but not 1e300: orjson writes integers of at most 64 bits."""
    return isinstance(value, float) and value.is_integer() and abs(value) < 2**63


def _any_integral_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(map(_any_integral_float, value.values()))
    if isinstance(value, list):
        return any(map(_any_integral_float, value))
    return _integral_float(value)


def _integral_floats_as_ints(value: Any) -> Any:
    if _integral_float(value):
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _payload_model(handler: Callable[..., Any]) -> type[BaseModel] | type[EmptyPayload]:
    """The model annotated on the handler's first parameter; EmptyPayload if there is none."""
    hints = typing.get_type_hints(handler)
    first = next(iter(inspect.signature(handler).parameters), None)
    model = hints.get(first) if first else None
    if not isinstance(model, type) or model is EmptyPayload:
        return EmptyPayload
    from pydantic import BaseModel

    return model if issubclass(model, BaseModel) else EmptyPayload


@functools.cache
def _import_model(path: str) -> type[BaseModel]:
    """The pydantic model an import string names ("module:Model")."""
    from pydantic import BaseModel

    module, _, name = path.partition(":")
    model = getattr(importlib.import_module(module), name, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ImportError(f"payload {path!r} is not a pydantic model")
    return model


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def job(
        self,
        name: str,
        *,
        payload: type[BaseModel] | str | None = None,
        queue: str | None = None,
        timeout: int = constants.DEFAULT_JOB_TIMEOUT,
        max_retries: int = 0,
        isolated: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        priority: Priority = "default",
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        schedule: str | Schedule | Sequence[str | Schedule] = (),
        timezone: str = "UTC",
        every: int | None = None,
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: str | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of job type `name`: a plain
        function (run in a thread of its worker process) or an `async def` one (run on the
        process's event loop).

        The payload schema is `payload` (a pydantic model, or its import string
        "module:Model"), else the pydantic model annotated on the handler's first parameter,
        else EmptyPayload (`{}`). A TTL left out is the default (RESULT_TTL, FAILURE_TTL), or
        the operator's ceiling when that is lower; one given above its ceiling stops the
        service at start.

        `schedule` makes the type run by itself: a cron expression (read in `timezone`), a
        `Schedule` (for a payload, a misfire policy or a name), or a list of either;
        `every=N` adds one every N seconds. Each fire time publishes exactly one job.

        `rate_limit="100/minute"` (at most 100 starts in any minute) and `concurrency_limit=5`
        (at most 5 running at once) hold across every worker container; with
        `limit_key="customer_id"` each value of that payload field has its own. A job over its
        limit waits without spending an attempt; the API can replace the limits at run time.
        """
        given = {"result_ttl": result_ttl, "failure_ttl": failure_ttl}
        if not NAME_PATTERN.match(name):
            raise ValueError(f"job type name {name!r} must match {NAME_PATTERN.pattern}")
        if name in self._types:
            raise ValueError(f"job type {name!r} is registered twice")
        if not isinstance(timeout, int) or timeout <= 0 or max_retries < 0:
            raise ValueError(
                f"job type {name!r}: timeout must be whole seconds > 0, max_retries >= 0"
            )
        if queue is not None and not queues.valid_base(queue):
            raise ValueError(f"job type {name!r}: queue {queue!r} must be a plain name")
        if any(ttl is not None and ttl <= 0 for ttl in given.values()):
            raise ValueError(f"job type {name!r}: result_ttl and failure_ttl must be > 0")
        if isinstance(payload, str) and not MODEL_PATH.match(payload):
            raise ValueError(f"job type {name!r}: payload {payload!r} must be 'module:Model'")
        schedules = _schedules(name, schedule, timezone, every)
        try:
            limit = Limit.of(rate_limit, concurrency_limit, limit_key)
        except LimitInvalid as exc:
            raise ValueError(f"job type {name!r}: {exc}") from None

        def register(handler: H) -> H:
            schema = payload or _payload_model(handler)
            job_type = JobType(
                name,
                handler,
                schema,
                queue,
                timeout,
                max_retries,
                isolated,
                backoff,
                priority,
                constants.RESULT_TTL if result_ttl is None else result_ttl,
                constants.FAILURE_TTL if failure_ttl is None else failure_ttl,
                given_ttls=frozenset(field for field, ttl in given.items() if ttl is not None),
                is_async=inspect.iscoroutinefunction(handler),
                schedules=schedules,
                limit=limit,
            )
            if not isinstance(schema, str):  # a model named by import string: checked on use
                _check_payloads(job_type)
            self._types[name] = job_type
            return handler

        return register

    def within(self, max_result_ttl: int, max_failure_ttl: int) -> Registry:
        """These job types with their TTLs within the operator's ceilings (MAX_RESULT_TTL,
        MAX_FAILURE_TTL): a default TTL is lowered to its ceiling; a TTL a registration gave
        above it raises TtlAboveCeiling, naming every such type (code asks for a retention
        the operator does not allow: which one gives way is for a person to decide)."""
        bounded = Registry()
        problems: list[str] = []
        for job_type in self:
            bounded._types[job_type.name] = dataclasses.replace(
                job_type,
                result_ttl=_within(job_type, "result_ttl", max_result_ttl, problems),
                failure_ttl=_within(job_type, "failure_ttl", max_failure_ttl, problems),
            )
        if problems:
            raise TtlAboveCeiling(problems)
        return bounded

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def queues(self, default: str) -> set[str]:
        """The named queues jobs go to: `default` (QUEUE_NAME) and every queue a type names.
        `queues.served` turns them into the RQ queues, three priorities each."""
        return {default} | {t.queue for t in self._types.values() if t.queue}

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __len__(self) -> int:
        return len(self._types)


def _schedules(
    name: str,
    schedule: str | Schedule | Sequence[str | Schedule],
    timezone: str,
    every: int | None,
) -> tuple[Schedule, ...]:
    """The schedules `@job` declares, each checked; two with the same key are refused."""
    given = [schedule] if isinstance(schedule, str | Schedule) else list(schedule)
    made = [Schedule(cron=s, timezone=timezone) if isinstance(s, str) else s for s in given]
    if every is not None:
        made.append(Schedule(every=every))
    keys = [s.key() for s in made]
    if len(set(keys)) != len(keys):
        raise ValueError(f"job type {name!r}: two schedules share a name (or are the same)")
    return tuple(made)


def _check_payloads(job_type: JobType) -> None:
    """Each schedule's payload against the type's schema: a job it would publish must not
    fail for its payload at every fire."""
    for declared in job_type.schedules:
        try:
            job_type.validate(dict(declared.payload), strict=True)
        except PayloadInvalid as exc:
            problems = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
            raise ValueError(
                f"job type {job_type.name!r}: schedule {declared.key()!r}: payload {problems}"
            ) from None


def _within(job_type: JobType, field: str, ceiling: int, problems: list[str]) -> int:
    ttl: int = getattr(job_type, field)
    if ttl > ceiling and field in job_type.given_ttls:
        variable = f"MAX_{field.upper()}"
        problems.append(
            f"job type {job_type.name!r}: {field}={ttl} is above {variable}={ceiling} (seconds)"
        )
    return min(ttl, ceiling)


registry = Registry()
job = registry.job


def load(modules: tuple[str, ...] = (), *, import_models: bool = True) -> Registry:
    """Import every HANDLER_MODULES module (each registers its job types); return the registry.

    `import_models` imports every payload model named by import string too, so a wrong name
    fails at start. Worker processes skip it (their supervisor has checked): each imports a
    model, and pydantic, only when it first runs a job of that type.
    """
    for module in modules:
        importlib.import_module(module)
    if import_models:
        for job_type in registry:
            job_type.model()
    return registry
