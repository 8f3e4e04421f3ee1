"""Built-in job types, used by the tests, the benchmarks and the quick start."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.context import JobContext
from service.registry import EmptyPayload, job


class JobFailed(Exception):
    """Raised by the `fail` job type."""


@job("noop")
def noop(payload: EmptyPayload, ctx: JobContext) -> None:
    """Does nothing: the cost of the machinery itself."""


class AnyObject(BaseModel):
    model_config = ConfigDict(extra="allow")


@job("echo")
def echo(payload: AnyObject, ctx: JobContext) -> dict[str, Any]:
    """Returns its payload as the job's result."""
    return payload.model_dump()


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=3600)


@job("sleep", payload=SleepPayload, timeout=3600)
def sleep(payload: SleepPayload, ctx: JobContext) -> float:
    """Sleeps, then returns the seconds slept."""
    time.sleep(payload.seconds)
    return payload.seconds


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="failed on purpose", max_length=1000)


@job("fail", payload=FailPayload)
def fail(payload: FailPayload, ctx: JobContext) -> None:
    """Raises JobFailed with the message."""
    raise JobFailed(payload.message)
