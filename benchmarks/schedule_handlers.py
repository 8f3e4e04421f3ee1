"""The job type of bench.py's schedules phase (HANDLER_MODULES=...,benchmarks.schedule_handlers),
kept apart from demo_handlers.py so that no other phase's workers fire it.

`bench.tick` runs every second; each run notes its job id and start time in the application
Redis, so the phase counts the runs per fire time as well as the jobs.
"""

from __future__ import annotations

import time

from service import JobContext, job
from service.jobs.registry import EmptyPayload

TICKS = "bench:ticks"  # application Redis: a hash, job id -> runs
TICK_STARTS = "bench:tick-starts"  # application Redis: a sorted set, job id -> first start


@job("bench.tick", every=1)
def tick(payload: EmptyPayload, ctx: JobContext) -> None:
    """Counts its own runs: a fire time run twice shows as a count of 2."""
    with ctx.redis.pipeline() as pipe:
        pipe.hincrby(TICKS, ctx.id, 1)
        pipe.zadd(TICK_STARTS, {ctx.id: time.time()}, nx=True)
        pipe.execute()
