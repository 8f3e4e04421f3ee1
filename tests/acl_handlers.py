"""Job types for the least-privilege test: none touches Redis itself, so every command the
test sees is the service's own."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from service import JobContext, job
from service.jobs.policy import IMMEDIATE
from service.jobs.registry import EmptyPayload


class Gate(BaseModel):
    path: str  # a file: the job fails (or waits) until it exists


@job("acl.ok")
def ok(payload: EmptyPayload, ctx: JobContext) -> str:
    return ctx.id


@job("acl.flaky", max_retries=1, backoff=IMMEDIATE)
def flaky(payload: EmptyPayload, ctx: JobContext) -> int:
    """Fails its first attempt, so the second is a retry."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


@job("acl.gated")
def gated(payload: Gate, ctx: JobContext) -> str:
    """Fails (to the dead-letter queue) until the file exists."""
    if not Path(payload.path).exists():
        raise RuntimeError("gate closed")
    return "passed"


@job("acl.hold")
def hold(payload: Gate, ctx: JobContext) -> str:
    """Runs until the file exists (a running job to cancel, or to lose with its worker)."""
    while not Path(payload.path).exists():
        time.sleep(0.01)
    return "released"


@job("acl.tick", every=1)
def tick(payload: object, ctx: JobContext) -> None:
    """A schedule firing every second."""
