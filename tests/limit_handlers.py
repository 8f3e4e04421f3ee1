"""Job types with limits, for the limits tests (HANDLER_MODULES=tests.limit_handlers)."""

from __future__ import annotations

import time

from pydantic import BaseModel

from service import JobContext, job


class Tenant(BaseModel):
    tenant: str = ""
    seconds: float = 0.2


def _run(name: str, payload: Tenant, ctx: JobContext) -> int:
    """Counts the runs of `name` going on now (every worker process, in the application Redis),
    keeps the highest count seen and each start's time, then sleeps."""
    name = f"{name}:{payload.tenant}"
    running = int(ctx.redis.incr(f"running:{name}"))
    ctx.redis.rpush(f"starts:{name}", f"{time.time()} {payload.tenant}")
    ctx.redis.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        f"max:{name}",
        running,
    )
    try:
        time.sleep(payload.seconds)
    finally:
        ctx.redis.decr(f"running:{name}")
    return ctx.attempt


@job("limits.two", concurrency_limit=2, limit_key="tenant", timeout=30)
def two_at_once(payload: Tenant, ctx: JobContext) -> int:
    """At most two running per tenant."""
    return _run("two", payload, ctx)


@job("limits.rated", rate_limit="5/second", timeout=30)
def five_a_second(payload: Tenant, ctx: JobContext) -> int:
    """At most five starts in any second."""
    return _run("rated", payload, ctx)


@job("limits.free", timeout=30)
def unlimited(payload: Tenant, ctx: JobContext) -> int:
    """No limit: shares the queue with the limited ones."""
    return _run("free", payload, ctx)
