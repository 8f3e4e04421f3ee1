"""The one table of job types: the API validates with it, the worker dispatches with it.

A job type is registered once, with its handler, payload schema and policies:

    from service import job

    class Welcome(BaseModel):
        to: EmailStr

    @job("email.welcome", payload=Welcome, timeout=30, max_retries=3)
    def welcome(payload: Welcome, ctx: JobContext) -> dict[str, str]:
        ...

Teams add their own modules through HANDLER_MODULES, without editing this package.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from service import constants, queues
from service.context import JobContext
from service.policy import Backoff
from service.queues import Priority

DEFAULT_BACKOFF = Backoff()

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


class Handler(Protocol):
    """A job handler: takes the validated payload and the job's context, returns JSON data."""

    def __call__(self, payload: Any, ctx: JobContext, /) -> Any: ...


H = TypeVar("H", bound=Callable[..., Any])


class EmptyPayload(BaseModel):
    """The payload of a job type that takes none: `{}`."""

    model_config = ConfigDict(extra="forbid")


class UnknownJobType(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown job type {name!r}")
        self.name = name
        self.known = known


class PayloadInvalid(ValueError):
    """The payload failed its schema; `errors` lists every field error at once."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} payload error(s)")
        self.errors = errors


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    handler: Handler
    payload: type[BaseModel]
    queue: str | None  # None: the QUEUE_NAME queue
    timeout: int  # whole seconds (RQ's format); the job is stopped and failed past it
    max_retries: int  # re-runs after a failure, as in RQ's Retry(max=...)
    isolated: bool  # run each job in a forked child, for handlers that leak or crash
    backoff: Backoff = DEFAULT_BACKOFF  # the wait before each retry
    priority: Priority = "default"
    result_ttl: int = constants.RESULT_TTL  # seconds a finished job and its result are kept
    failure_ttl: int = constants.FAILURE_TTL  # seconds a failed (dead) job is kept

    def validate(self, payload: Any, *, strict: bool = False) -> BaseModel:
        """The payload as its model; `strict`: as the API takes it (see `validate_json`)."""
        try:
            if strict:
                return validate_json(self.payload, payload)
            return self.payload.model_validate(payload)
        except ValidationError as exc:
            raise PayloadInvalid(
                [
                    {"field": ".".join(map(str, e["loc"])) or "payload", "message": e["msg"]}
                    for e in exc.errors(include_url=False)
                ]
            ) from None


M = TypeVar("M", bound=BaseModel)


def validate_json(model: type[M], data: Any) -> M:
    """Validate parsed JSON as the model's JSON Schema (and so the OpenAPI document) reads it:
    strictly typed, so "5" or true is no number and 1 no boolean, where pydantic's lax mode
    would convert them; yet an integral float (5.0) is an integer, as in JSON Schema."""
    try:
        return model.model_validate_json(orjson.dumps(data), strict=True)
    except ValidationError as exc:
        if not any(_integral_float(e["input"]) for e in exc.errors() if e["type"] == "int_type"):
            raise
    return model.model_validate_json(orjson.dumps(_integral_floats_as_ints(data)), strict=True)


def _integral_float(value: Any) -> bool:
    """5.0, but not 1e300: orjson writes integers of at most 64 bits."""
    return isinstance(value, float) and value.is_integer() and abs(value) < 2**63


def _integral_floats_as_ints(value: Any) -> Any:
    if _integral_float(value):
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def _payload_model(handler: Callable[..., Any]) -> type[BaseModel]:
    """The model annotated on the handler's first parameter; EmptyPayload if there is none."""
    hints = typing.get_type_hints(handler)
    first = next(iter(inspect.signature(handler).parameters), None)
    model = hints.get(first) if first else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else EmptyPayload


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def job(
        self,
        name: str,
        *,
        payload: type[BaseModel] | None = None,
        queue: str | None = None,
        timeout: int = constants.DEFAULT_JOB_TIMEOUT,
        max_retries: int = 0,
        isolated: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        priority: Priority = "default",
        result_ttl: int = constants.RESULT_TTL,
        failure_ttl: int = constants.FAILURE_TTL,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of job type `name`.

        The payload schema is `payload`, else the pydantic model annotated on the handler's
        first parameter, else EmptyPayload (`{}`).
        """
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
        if result_ttl <= 0 or failure_ttl <= 0:
            raise ValueError(f"job type {name!r}: result_ttl and failure_ttl must be > 0")

        def register(handler: H) -> H:
            schema = payload or _payload_model(handler)
            self._types[name] = JobType(
                name,
                handler,
                schema,
                queue,
                timeout,
                max_retries,
                isolated,
                backoff,
                priority,
                result_ttl,
                failure_ttl,
            )
            return handler

        return register

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._types)

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)


registry = Registry()
job = registry.job


def load(modules: tuple[str, ...] = ()) -> Registry:
    """Import the built-in handlers and every HANDLER_MODULES module; return the registry."""
    importlib.import_module("service.handlers")
    for module in modules:
        importlib.import_module(module)
    return registry
