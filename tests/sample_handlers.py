"""Job types used only by the tests (loaded through HANDLER_MODULES=tests.sample_handlers)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from pydantic import BaseModel

from service import AsyncJobContext, JobContext, job
from service.jobs.registry import EmptyPayload
from service.telemetry import tracing


class Key(BaseModel):
    key: str


class Gate(BaseModel):
    gate: str


class Flaky(BaseModel):
    fail_times: int


@job("test.flaky", max_retries=2)
def flaky(payload: Flaky, ctx: JobContext) -> int:
    """Fails on its first `fail_times` attempts, then returns the attempt number."""
    ctx.redis.rpush(f"runs:{ctx.id}", ctx.attempt)
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return ctx.attempt


@job("test.count")
def count(payload: Key, ctx: JobContext) -> str:
    """Counts its runs in the application Redis under `payload.key`."""
    ctx.redis.incr(payload.key)
    return ctx.id


@job("test.block", max_retries=1)
def block(payload: Key, ctx: JobContext) -> str:
    """Marks itself started, then runs until `payload.key` exists (no sleeping on a guess)."""
    ctx.redis.rpush("started", ctx.id)
    while not ctx.redis.exists(payload.key):
        time.sleep(0.01)
    ctx.redis.rpush("finished", ctx.id)
    return "released"


@job("test.slow", timeout=1)
def slow(payload: Key, ctx: JobContext) -> None:
    """Runs past its 1 s timeout."""
    ctx.redis.rpush("started", ctx.id)
    time.sleep(30)


@job("test.crash", max_retries=10)
def crash(payload: Key, ctx: JobContext) -> None:
    """Kills its own worker process, every time."""
    ctx.redis.incr(payload.key)
    os.kill(os.getpid(), signal.SIGKILL)


@job("test.crash_isolated", isolated=True)
def crash_isolated(payload: Key, ctx: JobContext) -> None:
    """Kills its process: with isolation, only the forked child dies."""
    ctx.redis.incr(payload.key)
    os.kill(os.getpid(), signal.SIGKILL)


@job("test.pid_isolated", isolated=True)
def pid_isolated(payload: Key, ctx: JobContext) -> int:
    """Returns the pid it ran in."""
    return os.getpid()


@job("test.swallow", timeout=1)
def swallow(payload: Key, ctx: JobContext) -> None:
    """Runs past its timeout while catching every Exception: the timeout must still win."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the point of this handler
            ctx.logger.info("swallowed")


@job("test.report", queue="reports")
def report(payload: Key, ctx: JobContext) -> str:
    """A job type on its own queue, for worker specialization."""
    return ctx.queue


@job("test.progress")
def progress(payload: Key, ctx: JobContext) -> str:
    """Reports 50 %, then runs until `payload.key` exists."""
    ctx.progress(50, "half way")
    while not ctx.redis.exists(payload.key):
        time.sleep(0.01)
    ctx.progress(100, "done")
    return "done"


@job("test.db")
def db(payload: Key, ctx: JobContext) -> str:
    """Writes a document to the application's MongoDB (ctx.db), returns its key."""
    ctx.db["notes"].insert_one({"key": payload.key, "job": ctx.id})
    return payload.key


@job("test.fail_until", max_retries=0)
def fail_until(payload: Key, ctx: JobContext) -> str:
    """Fails (no retry: a dead letter at once) until `payload.key` exists, then succeeds."""
    if not ctx.redis.exists(payload.key):
        raise RuntimeError(f"{payload.key} is not there yet")
    return "recovered"


@job("test.trace_id")
def trace_id(payload: EmptyPayload, ctx: JobContext) -> str:
    """Returns the trace id current while it runs ('' with tracing off)."""
    return tracing.current_trace_id()


@job("test.gated")
def gated(payload: Gate, ctx: JobContext) -> int:
    """Counts its starts and completions per job id (hashes `starts`, `completions`); in
    between, runs until `payload.gate` exists."""
    ctx.redis.hincrby("starts", ctx.id, 1)
    while not ctx.redis.exists(payload.gate):
        time.sleep(0.01)
    ctx.redis.hincrby("completions", ctx.id, 1)
    return ctx.attempt


class Size(BaseModel):
    chars: int


@job("test.not_json", max_retries=1)
def not_json(payload: EmptyPayload, ctx: JobContext) -> set[int]:
    """Returns a set, which JSON cannot hold."""
    return {1, 2}


@job("test.not_json_isolated", isolated=True)
def not_json_isolated(payload: EmptyPayload, ctx: JobContext) -> set[int]:
    return {1, 2}


@job("test.sized")
def sized(payload: Size, ctx: JobContext) -> str:
    """Returns a string of `chars` characters: its JSON is `chars` + 2 bytes."""
    return "x" * payload.chars


@job("test.sized_isolated", isolated=True)
def sized_isolated(payload: Size, ctx: JobContext) -> str:
    return "x" * payload.chars


# --- async handlers and concurrency ---------------------------------------------------------


@job("test.async_gated")
async def async_gated(payload: Gate, ctx: AsyncJobContext) -> dict[str, object]:
    """test.gated on the event loop, with the process's asyncio clients: counts its starts
    and completions (hashes `starts`, `completions`); in between, waits for `payload.gate`.
    Returns what it ran with: the process, and the identity and kind of its client."""
    await ctx.redis.hincrby("starts", ctx.id, 1)
    while not await ctx.redis.exists(payload.gate):
        await asyncio.sleep(0.01)
    await ctx.redis.hincrby("completions", ctx.id, 1)
    client = ctx.redis
    return {"pid": os.getpid(), "client": id(client), "kind": type(client).__module__}


@job("test.async_slow", timeout=1)
async def async_slow(payload: Key, ctx: AsyncJobContext) -> None:
    """Awaits past its 1 s timeout; marks itself started, and `cancelled` when stopped."""
    await ctx.redis.rpush("started", ctx.id)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await ctx.redis.rpush("cancelled", ctx.id)
        raise


@job("test.spin", timeout=1)
def spin(payload: Key, ctx: JobContext) -> None:
    """Computes past its 1 s timeout, in Python: an exception raised in its thread stops it."""
    ctx.redis.rpush("started", ctx.id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass


@job("test.poison", max_retries=10)
def poison(payload: Gate, ctx: JobContext) -> None:
    """Aborts its process once `payload.gate` holds a count of starts reached (its neighbours
    are running), every time it runs."""
    ctx.redis.incr("poison_runs")
    need = int(ctx.redis.get(payload.gate) or 0)
    while len(ctx.redis.hkeys("starts")) < need:
        time.sleep(0.01)
    os.abort()


@job("test.async_db")
async def async_db(payload: Key, ctx: AsyncJobContext) -> str:
    """Writes a document with the process's asyncio MongoDB client (ctx.db), returns its key."""
    await ctx.db["notes"].insert_one({"key": payload.key, "job": ctx.id})
    return type(ctx.db).__name__
