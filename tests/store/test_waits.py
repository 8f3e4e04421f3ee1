"""Long-polls on the suite's redis-server: requests waiting for jobs to end are answered when
an attempt ends them (not when one is retried), by one blocking connection for all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION, RedisTarget
from service.jobs import records
from service.jobs.states import Ending
from service.store.cancel import Cancel
from service.store.claim import Claimed
from service.store.complete import CompleteSync, Completion
from service.store.connection import Direct
from service.store.publish import publish_now
from service.store.waits import Waits
from tests.store.conftest import new_job

WAITERS = 200


def target(redis_url: str) -> RedisTarget:
    parts = urlsplit(redis_url)
    return RedisTarget(parts.hostname or "127.0.0.1", parts.port or 6379, 1)


def end(claimed: Claimed, ending: Ending) -> Completion:
    value = records.encode_return_value(b"1") if ending is Ending.OK else b"boom"
    now = time.time()
    return Completion(ending, claimed.id, claimed.queue, claimed.member, value, now - 0.1, now)


def run(redis_url: str, scenario: Callable[[Waits, aioredis.Redis], Awaitable[None]]) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(f"{redis_url}/1")
        waits = Waits(target(redis_url))
        waits.start(client)
        try:
            await scenario(waits, client)
        finally:
            await waits.close()
            await client.aclose()

    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def clients(queue_redis: redis.Redis) -> int:
    return len(queue_redis.client_list())


def test_many_waits_share_one_connection_and_end_when_their_jobs_finish(
    redis_url: str,
    queue_redis: redis.Redis,
    published: Callable,
    claim: Callable,
    complete: CompleteSync,
) -> None:
    published(WAITERS)
    claimed = claim(WAITERS)
    before = clients(queue_redis)

    async def scenario(waits: Waits, client: aioredis.Redis) -> None:
        started = time.monotonic()
        tasks = [asyncio.create_task(waits.until_final(c.id, "0-0", 30)) for c in claimed]
        await until(lambda: waits.waiting == WAITERS)
        await asyncio.sleep(0.2)  # they stay waiting: nothing has ended
        assert not any(task.done() for task in tasks)
        # The waiting connection and the API's own (status reads, unblocking): not one each.
        assert clients(queue_redis) - before <= 3
        ends = [end(c, Ending.OK) for c in claimed]
        await asyncio.to_thread(complete, "w", ends, time.time())
        done, _ = await asyncio.wait(tasks, timeout=20)
        assert len(done) == WAITERS
        assert time.monotonic() - started < 20  # answered at the end, not at the deadline
        assert waits.waiting == 0

    run(redis_url, scenario)


def test_a_retried_attempt_keeps_waiting_and_a_cancel_ends_the_wait(
    redis_url: str,
    queue_redis: redis.Redis,
    claim: Callable,
    complete: CompleteSync,
) -> None:
    flaky, queued = new_job(retries=1), new_job()
    publish_now(queue_redis, [flaky])
    (claimed,) = claim(1)
    publish_now(queue_redis, [queued])

    async def scenario(waits: Waits, client: aioredis.Redis) -> None:
        retried = asyncio.create_task(waits.until_final(flaky.id, "0-0", 1.0))
        canceled = asyncio.create_task(waits.until_final(queued.id, "0-0", 30))
        await until(lambda: waits.waiting == 2)
        started = time.monotonic()
        await asyncio.to_thread(complete, "w", [end(claimed, Ending.FAIL)], time.time())
        await Cancel(DEFAULT_RETENTION)(Direct(client), queued.id, time.time())
        await asyncio.wait_for(canceled, 10)
        assert not retried.done()  # a retry is no end
        await asyncio.wait_for(retried, 10)
        assert time.monotonic() - started >= 0.5  # it ran to its deadline
        status = queue_redis.hget(constants.job_key(flaky.id), "status")
        assert status in (b"queued", b"scheduled")

    run(redis_url, scenario)


def test_release_all_answers_every_wait_at_once(
    redis_url: str, queue_redis: redis.Redis, published: Callable
) -> None:
    (job,) = published()

    async def scenario(waits: Waits, client: aioredis.Redis) -> None:
        task = asyncio.create_task(waits.until_final(job.id, "0-0", 30))
        await until(lambda: waits.waiting == 1)
        waits.release_all()
        await asyncio.wait_for(task, 5)
        # Once closing, a new wait answers at once.
        await asyncio.wait_for(waits.until_final(job.id, "0-0", 30), 5)

    run(redis_url, scenario)
