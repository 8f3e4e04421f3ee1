"""Fixtures for driving the store's scripts directly against the suite's redis-server: jobs
published, claimed and ended through the scripts' own wrappers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from service.config.settings import DEFAULT_RETENTION
from service.jobs import records
from service.store.claim import Claimed, ClaimSync
from service.store.complete import CompleteSync
from service.store.connection import Direct
from service.store.publish import publish_now

T = TypeVar("T")
QUEUE = "q"
MAX_CRASHES = 3


def new_job(queue: str = QUEUE, **fields: Any) -> records.NewJob:
    return records.NewJob(
        records.new_id(), "noop", queue, {}, 180, fields.pop("retries", 0), **fields
    )


@pytest.fixture
def published(queue_redis: redis.Redis) -> Callable[..., list[records.NewJob]]:
    """Publish `count` jobs (PUBLISH) with these fields; returns them."""

    def publish(count: int = 1, queue: str = QUEUE, **fields: Any) -> list[records.NewJob]:
        jobs = [new_job(queue, **fields) for _ in range(count)]
        publish_now(queue_redis, jobs)
        return jobs

    return publish


@pytest.fixture
def claim(queue_redis: redis.Redis) -> Callable[..., list[Claimed]]:
    """CLAIM for worker `w`, held for a minute."""

    def take(
        count: int = 10, queues: tuple[str, ...] = (QUEUE,), worker: str = "w"
    ) -> list[Claimed]:
        script = ClaimSync(queue_redis, worker, queues)
        return script(count, score=int(time.time()) + 60, execution="x")

    return take


@pytest.fixture
def complete(queue_redis: redis.Redis) -> CompleteSync:
    return CompleteSync(queue_redis, DEFAULT_RETENTION, MAX_CRASHES)


@pytest.fixture
def on_client(redis_url: str) -> Callable[[Callable[[aioredis.Redis], Awaitable[T]]], T]:
    """Run `scenario(client)` with an asyncio client of the test's queue database."""

    def run(scenario: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        async def main() -> T:
            client = aioredis.Redis.from_url(f"{redis_url}/1")
            try:
                return await scenario(client)
            finally:
                await client.aclose()

        return asyncio.run(main())

    return run


@pytest.fixture
def on_direct(
    on_client: Callable[[Callable[[aioredis.Redis], Awaitable[T]]], T],
) -> Callable[[Callable[[Direct], Awaitable[T]]], T]:
    """Run `scenario(direct)` on the API's direct path to the test's queue database."""
    return lambda scenario: on_client(lambda client: scenario(Direct(client)))
