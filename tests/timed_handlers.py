"""A job type that notes when it started (loaded only by the processes of
tests/system/test_pause.py, through HANDLER_MODULES): the worker's own `started_at` is the
claim's time, and a job claimed ahead starts later."""

from __future__ import annotations

import time

from pydantic import BaseModel

from service import JobContext, job

STARTS = "starts"  # app Redis: a sorted set of job ids, scored by when each started


class Nap(BaseModel):
    seconds: float


@job("test.timed")
def timed(payload: Nap, ctx: JobContext) -> None:
    """Adds its id to STARTS at its start time, then sleeps."""
    ctx.redis.zadd(STARTS, {ctx.id: time.time()})
    time.sleep(payload.seconds)
