"""Built-in job types, used by the tests, the benchmarks and the quick start."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from service.jobs.context import JobContext
from service.jobs.registry import EmptyPayload, job

if TYPE_CHECKING:
    from service.dev.demo_payloads import AnyObject, FailPayload, SleepPayload


class JobFailed(Exception):
    """Raised by the `fail` job type."""


@job("noop")
def noop(payload: EmptyPayload, ctx: JobContext) -> None:
    """Does nothing: the cost of the machinery itself."""


@job("echo", payload="service.dev.demo_payloads:AnyObject")
def echo(payload: AnyObject, ctx: JobContext) -> dict[str, Any]:
    """Returns its payload as the job's result."""
    return payload.model_dump()


@job("sleep", payload="service.dev.demo_payloads:SleepPayload", timeout=3600)
def sleep(payload: SleepPayload, ctx: JobContext) -> float:
    """Sleeps, then returns the seconds slept."""
    time.sleep(payload.seconds)
    return payload.seconds


@job("fail", payload="service.dev.demo_payloads:FailPayload")
def fail(payload: FailPayload, ctx: JobContext) -> None:
    """Raises JobFailed with the message."""
    raise JobFailed(payload.message)
