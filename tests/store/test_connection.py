"""The API's hot-path Redis calls (`store.Direct`, `store.Script`) against a real redis-server:
connections reused, a stale one replaced, a stalled Redis a timeout, scripts reloaded."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import RedisTarget
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import records
from service.store import lua, scripts
from service.store.connection import Direct, Script, connect_async
from service.store.publisher import Coalescer, QueueFull, Store

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which it may restart or pause."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


def client_for(url: str) -> aioredis.Redis:
    """The API's client (db 1), as `connect_async` makes it: timeouts and all."""
    client = aioredis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    target = RedisTarget(host=kwargs["host"], port=kwargs["port"], db=1)
    return connect_async(target)


def clients(url: str) -> int:
    """Connections the Redis at `url` has, this one excluded."""
    with redis.Redis.from_url(url) as admin:
        return len(admin.client_list()) - 1


def a_job() -> records.NewJob:
    return records.NewJob(
        id=records.new_id(), type="noop", queue="q", payload={}, timeout=5, max_retries=0
    )


def test_concurrent_calls_open_one_connection_each_and_reuse_them(redis_url: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        client = client_for(redis_url)
        direct = Direct(client)
        try:
            await asyncio.gather(*(direct.call("PING") for _ in range(8)))
            first = clients(redis_url)
            replies = await asyncio.gather(*(direct.call("INCR", "n") for _ in range(8)))
            again = clients(redis_url)
            assert sorted(replies) == list(range(1, 9))
        finally:
            await client.aclose()
        return first, again, clients(redis_url)

    first, again, after_close = asyncio.run(scenario())
    assert first == 8  # eight calls at once: eight connections
    assert again == 8  # the next eight reuse them
    assert after_close == 0  # the client's aclose closes them


def test_an_error_reply_keeps_the_connection(redis_url: str) -> None:
    async def scenario() -> int:
        client = client_for(redis_url)
        direct = Direct(client)
        try:
            await direct.call("SET", "text", "a")
            with pytest.raises(redis.ResponseError, match="not an integer"):
                await direct.call("INCR", "text")
            assert await direct.call("GET", "text") == b"a"
            return clients(redis_url)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == 1


def test_a_connection_stale_since_redis_restarted_is_replaced(own_redis: EmbeddedRedis) -> None:
    async def scenario() -> None:
        client = client_for(own_redis.url)
        store = Store(client)
        try:
            await store.publish([a_job()])  # a connection, now idle
            own_redis.restart()  # its socket is dead; Redis is back, empty (no script loaded)
            job = a_job()
            await store.publish([job])  # the stale connection fails, a new one serves
            with redis.Redis.from_url(f"{own_redis.url}/1") as check:
                assert check.lrange("rq:queue:q", 0, -1) == [job.id.encode()]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_script_flushed_from_redis_is_loaded_again(redis_url: str) -> None:
    async def scenario() -> None:
        client = client_for(redis_url)
        direct = Direct(client)
        script = Script("return ARGV[2] .. '!'")  # ARGV[1]: the key prefix
        try:
            assert await script(direct, ["a"]) == b"a!"
            await direct.call("SCRIPT", "FLUSH")
            assert await script(direct, ["b"]) == b"b!"
            sha = script.form(await direct.server_version())[1]
            assert await direct.call("SCRIPT", "EXISTS", sha) == [1]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_scripts_sha_is_the_one_redis_computes(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        version = lua.server_version(admin)
        source, sha = Script(scripts.PUBLISH).form(version)
        assert admin.script_load(source) == sha


@pytest.mark.timeout(20)
def test_a_stalled_redis_is_a_timeout_not_repeated_and_the_connection_dropped(
    own_redis: EmbeddedRedis,
) -> None:
    async def scenario() -> None:
        client = client_for(own_redis.url)
        direct = Direct(client)
        loop = asyncio.get_running_loop()
        try:
            await direct.call("SET", "n", 0)
            assert own_redis.pid is not None
            os.kill(own_redis.pid, signal.SIGSTOP)
            try:
                started = loop.time()
                with pytest.raises(redis.TimeoutError):
                    await direct.call("INCR", "n")
                waited = loop.time() - started
            finally:
                os.kill(own_redis.pid, signal.SIGCONT)
            assert 1.5 < waited < 4  # REDIS_SOCKET_TIMEOUT (2 s), once
            assert await direct.call("GET", "n") == b"1"  # sent once, run once, on resume
            assert clients(own_redis.url) == 1  # the timed-out connection was closed
        finally:
            await client.aclose()

    asyncio.run(scenario())


def evalsha_calls(url: str) -> int:
    with redis.Redis.from_url(url) as admin:
        stats = admin.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))


def test_jobs_published_in_one_loop_turn_go_in_one_script_call_in_order(redis_url: str) -> None:
    async def scenario() -> None:
        client = client_for(redis_url)
        store = Store(client)
        try:
            await store.publish_soon(a_job())  # loads the script
            with redis.Redis.from_url(redis_url) as admin:
                admin.config_resetstat()
            batch = [a_job() for _ in range(20)]
            await asyncio.gather(*(store.publish_soon(job) for job in batch))
            assert evalsha_calls(redis_url) == 1
            alone = a_job()
            await store.publish_soon(alone)  # nothing else in its turn: a call of its own
            assert evalsha_calls(redis_url) == 2
            with redis.Redis.from_url(f"{redis_url}/1") as check:
                queued = check.lrange("rq:queue:q", 1, -1)
                assert queued == [job.id.encode() for job in [*batch, alone]]
                assert check.hget(f"rq:job:{alone.id}", "status") == b"queued"
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_jobs_sent_together_are_admitted_one_by_one_under_max_backlog(redis_url: str) -> None:
    async def scenario() -> list[BaseException | None]:
        client = client_for(redis_url)
        store = Store(client, max_backlog=5)
        try:
            await asyncio.gather(*(store.publish_soon(a_job()) for _ in range(3)))
            return await asyncio.gather(
                *(store.publish_soon(a_job()) for _ in range(4)), return_exceptions=True
            )
        finally:
            await client.aclose()

    outcomes = asyncio.run(scenario())
    assert outcomes[:2] == [None, None]  # two places left: the first two take them
    for refused in outcomes[2:]:
        assert isinstance(refused, QueueFull)
        assert (refused.queue, refused.backlog, refused.limit) == ("q", 5, 5)
    with redis.Redis.from_url(f"{redis_url}/1") as check:
        assert check.llen("rq:queue:q") == 5
        assert len(check.keys("rq:job:*")) == 5  # nothing of the refused ones written


def test_a_failed_call_reaches_every_job_sent_in_it(own_redis: EmbeddedRedis) -> None:
    async def scenario() -> list[BaseException | None]:
        client = client_for(own_redis.url)
        store = Store(client)
        try:
            await store.publish_soon(a_job())
            own_redis.stop()
            return await asyncio.gather(
                *(store.publish_soon(a_job()) for _ in range(3)), return_exceptions=True
            )
        finally:
            await client.aclose()

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [redis.ConnectionError] * 3


def test_callers_are_cancelled_with_their_call_not_left_waiting() -> None:
    async def send(batch: list[records.NewJob]) -> list[Exception | None]:
        raise asyncio.CancelledError  # as when the task sending it is cancelled

    async def scenario() -> list[BaseException | None]:
        coalescer = Coalescer(send)
        waiting = [asyncio.ensure_future(coalescer.add(a_job())) for _ in range(3)]
        await asyncio.wait(waiting, timeout=5)
        return [task.exception() if not task.cancelled() else None for task in waiting]

    assert asyncio.run(scenario()) == [None, None, None]  # all three cancelled, none pending


def test_a_turn_with_more_jobs_than_a_batch_holds_is_sent_in_batches() -> None:
    sent: list[int] = []

    async def send(batch: list[records.NewJob]) -> list[Exception | None]:
        sent.append(len(batch))
        return [None] * len(batch)

    async def scenario() -> None:
        coalescer = Coalescer(send)
        count = 2 * constants.MAX_BATCH_JOBS + 5
        await asyncio.gather(*(coalescer.add(a_job()) for _ in range(count)))

    asyncio.run(scenario())
    assert sent == [constants.MAX_BATCH_JOBS, constants.MAX_BATCH_JOBS, 5]
