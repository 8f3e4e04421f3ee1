"""Job types for the benchmarks (HANDLER_MODULES=benchmarks.demo_handlers).

`demo.*` serve benchmarks/dashboard.py. They do nothing useful: they sleep, fail and hang in
known proportions, so the dashboard's panels have something to show. Random draws use the
job's id as the seed, so a re-delivered or retried attempt of the same job draws the same way
(except `demo.flaky`, which draws per attempt, as a flaky dependency would).

`bench.*` serve bench.py's concurrency and memory phases: a job that waits on I/O, written
both ways (`async def` awaiting a timer, a plain function blocking in `time.sleep`), one
that keeps a core busy, and an async no-op; and the schedules phase's pause figure: a job
that notes when it started.
"""

from __future__ import annotations

import asyncio
import random
import time

from service import JobContext, job
from service.jobs.policy import Backoff
from service.jobs.registry import EmptyPayload

OUTAGE_KEY = "demo:outage"  # in the application Redis: while it exists, demo.flaky fails
FLAKY_FAILURE = 0.10  # share of demo.flaky attempts that fail in normal times
OUTAGE_FAILURE = 0.80  # and while OUTAGE_KEY exists (its "dependency" is down)
HANG_SHARE = 0.04  # share of demo.slow jobs that hang past their timeout


class DependencyError(Exception):
    """demo.flaky's dependency refused the call."""


@job("demo.work")
def work(payload: EmptyPayload, ctx: JobContext) -> None:
    """The everyday job: 5-50 ms of waiting on something."""
    time.sleep(random.Random(ctx.id).uniform(0.005, 0.050))


@job("demo.import", priority="low")
def bulk_import(payload: EmptyPayload, ctx: JobContext) -> None:
    """One row of a bulk import: low priority, 5-15 ms."""
    time.sleep(random.Random(ctx.id).uniform(0.005, 0.015))


@job("demo.flaky", max_retries=2, backoff=Backoff(type="fixed", base=1.0, jitter=False))
def flaky(payload: EmptyPayload, ctx: JobContext) -> None:
    """Calls a dependency that fails 10 % of the time, 80 % while OUTAGE_KEY exists; retried
    twice, a second apart, then dead-lettered."""
    time.sleep(random.uniform(0.005, 0.020))
    failure = OUTAGE_FAILURE if ctx.redis.exists(OUTAGE_KEY) else FLAKY_FAILURE
    if random.random() < failure:
        raise DependencyError("the dependency refused the call")


@job("demo.slow", timeout=1, max_retries=1)
def slow(payload: EmptyPayload, ctx: JobContext) -> None:
    """50-200 ms; 4 % of jobs hang for 2 s and hit their 1 s timeout (twice: one retry)."""
    draw = random.Random(ctx.id)
    time.sleep(2.0 if draw.random() < HANG_SHARE else draw.uniform(0.05, 0.2))


IO_SECONDS = 0.1  # how long an I/O job waits
CPU_SECONDS = 0.02  # CPU time a CPU-bound job spends in its loop


@job("bench.async_sleep")
async def async_sleep(payload: EmptyPayload, ctx: JobContext) -> None:
    """An I/O-bound job written for the event loop: awaits a 100 ms timer."""
    await asyncio.sleep(IO_SECONDS)


@job("bench.sync_sleep")
def sync_sleep(payload: EmptyPayload, ctx: JobContext) -> None:
    """The same job as a plain function that blocks its thread for 100 ms."""
    time.sleep(IO_SECONDS)


@job("bench.cpu")
def cpu(payload: EmptyPayload, ctx: JobContext) -> None:
    """A CPU-bound job: a pure-Python loop until its thread has used 20 ms of CPU (CPU time,
    not wall time, so every job does the same work however busy the machine is)."""
    end = time.thread_time() + CPU_SECONDS
    while time.thread_time() < end:
        total = 0
        for i in range(1000):
            total += i * i


@job("bench.async_noop")
async def async_noop(payload: EmptyPayload, ctx: JobContext) -> None:
    """Does nothing, on the event loop: the cost of running a task."""


STAMPS = "bench:stamps"  # application Redis: a sorted set, job id -> when it started


@job("bench.stamp")
def stamp(payload: EmptyPayload, ctx: JobContext) -> None:
    """Notes when it started (the worker's `started_at` is its claim's time, and a job claimed
    ahead starts later), then waits 5 ms: the schedules phase's pause figure."""
    ctx.redis.zadd(STAMPS, {ctx.id: time.time()})
    time.sleep(0.005)


# `limits.*` serve bench.py's limits phase (benchmarks/limits.py).
LIMIT_RUNNING = "bench:limits:running"  # in the application Redis: the ids running now


@job("limits.rated", rate_limit="20/second")
def rated(payload: EmptyPayload, ctx: JobContext) -> None:
    """At most 20 starts in any second, across every container: does nothing."""


@job("limits.slots", concurrency_limit=5)
def slots(payload: EmptyPayload, ctx: JobContext) -> None:
    """At most 5 running at once, across every container: counted while it sleeps 100 ms."""
    ctx.redis.sadd(LIMIT_RUNNING, ctx.id)
    try:
        time.sleep(IO_SECONDS)
    finally:
        ctx.redis.srem(LIMIT_RUNNING, ctx.id)
