"""Redis clients that fail fast, and the API's side of Redis: publish jobs, read a job, count
queues (async, one round trip each)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

from service import constants, jobs, lua, scripts, tracing
from service.deadline import before
from service.settings import DEFAULT_RETENTION, RedisTarget, Retention


def connect(target: RedisTarget) -> redis.Redis:
    """A synchronous client that fails fast (workers, start-up checks); its socket timeout
    stays above the workers' longest blocking wait."""
    return redis.Redis.from_url(
        target.url,
        socket_timeout=constants.WORKER_SOCKET_TIMEOUT,  # above the longest BLPOP wait
        socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
    )


def out_of_memory(exc: Exception) -> bool:
    """Whether Redis refused a command or script for want of memory (`maxmemory`, noeviction):
    Redis 7 refuses a flagged script whole with OOM, Redis 6.2 wraps the refused command in a
    script error."""
    if isinstance(exc, redis.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and "used memory > 'maxmemory'" in str(exc)


class _CPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous connections already do; its
    asyncio connections pack in Python: 10 µs for a publish's 16 arguments (1.5 here), 9 µs of
    every job in a batch (1.7 here). The bytes are the same."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'CONFIG GET' and the like: one argument per word
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.DataError(str(exc)) from None


class _TimerBoundWrites:
    """redis-py bounds every write by `socket_timeout` with asyncio.wait_for, which runs the
    write in a new task: a tenth of a publish request's CPU, and a loop iteration.

    A write can only wait when the transport's buffer passes its high-water mark (64 KiB):
    before a command the buffer is empty (the previous reply was read, or the connection was
    dropped), so a smaller command never waits and needs no timer. A larger one (a big batch)
    keeps redis-py's bounded write. The health check's PING runs first, under the timeout."""

    socket_timeout: float | None
    SMALL = 16 * 1024  # bytes: well under the high-water mark

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        send = super().send_packed_command  # type: ignore[misc]
        if check_health:
            await super().check_health()  # type: ignore[misc]
        if not isinstance(command, list) or sum(map(len, command)) > self.SMALL:
            return await send(command, False)  # type: ignore[no-any-return]
        # With no socket_timeout redis-py writes inline; the connection serves one command at
        # a time, so the timeout is set aside for this call only.
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            await send(command, False)
        finally:
            self.socket_timeout = timeout


class _Connection(_TimerBoundWrites, _CPacking, aioredis.Connection):
    pass


class _SSLConnection(_TimerBoundWrites, _CPacking, aioredis.SSLConnection):
    pass


def connect_async(target: RedisTarget) -> aioredis.Redis:
    """A client that fails fast: a dead or stalled Redis costs seconds, never a hang."""
    return aioredis.Redis.from_url(
        target.url,
        socket_timeout=constants.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
        connection_class=_SSLConnection if target.ssl else _Connection,
    )


class Direct:
    """Commands on the API's hot path (publish, cancel), on connections kept here.

    A redis-py 8 client call wraps each command in a pool checkout under a lock, a probe of
    the connection, a retry closure and observability hooks: about 30 µs of CPU, as much as
    the rest of the Redis round trip. This keeps redis-py's connections (connect, AUTH,
    SELECT, TLS, the reply parser, the 30 s health check) and skips the rest: a connection
    taken from the client's pool stays checked out, in a list of idle ones, between commands
    (the client's `aclose()` still closes it: a pool closes the connections it lent too).

    A connection that fails is dropped (disconnected, given back to the pool). When it had
    been idle, Redis may have restarted or closed it meanwhile, so the command is sent once
    more on another (as redis-py's pool would find out before sending); a timeout is never
    repeated, since the command may have run.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._idle: list[aioredis.Connection] = []
        self.version: lua.Version | None = None  # the server's, once read

    async def server_version(self) -> lua.Version:
        """The server's version (INFO server, on the client: read once)."""
        self.version = await lua.server_version_async(self._client)
        return self.version

    async def call(self, *args: Any) -> Any:
        if self._idle:
            try:
                return await self._call(self._idle.pop(), args)
            except redis.ConnectionError:
                pass  # a stale connection: once more on another
        return await self._call(await self._pool.get_connection(), args)  # type: ignore[no-untyped-call]

    async def _call(self, conn: aioredis.Connection, args: tuple[Any, ...]) -> Any:
        try:
            await conn.send_packed_command(conn.pack_command(*args))
            reply = await self._read(conn)
        except redis.ResponseError:
            self._idle.append(conn)  # Redis answered (NOSCRIPT, OOM...): the connection is fine
            raise
        except BaseException:
            await conn.disconnect(nowait=True)  # usually done by redis-py already
            await self._pool.release(conn)
            raise
        self._idle.append(conn)
        return reply

    @staticmethod
    async def _read(conn: aioredis.Connection) -> Any:
        """The reply, within `socket_timeout`: redis-py's asyncio.timeout costs 6 µs a read,
        a bare timer a quarter of that (on expiry the read is cancelled, which drops the
        connection, and the error is redis-py's)."""
        timeout = conn.socket_timeout
        if timeout is None:
            return await conn.read_response()
        deadline = asyncio.get_running_loop().time() + timeout
        conn.socket_timeout = None  # the connection serves one command at a time
        try:
            return await before(deadline, conn.read_response(), lambda: _timed_out(conn))
        finally:
            conn.socket_timeout = timeout


def _timed_out(conn: aioredis.Connection) -> redis.TimeoutError:
    return redis.TimeoutError(f"Timeout reading from {conn.host}:{conn.port}")


class Script:
    """A Lua script run by EVALSHA on `Direct` (loaded on NOSCRIPT, as redis-py's Script), in
    the form its server runs (`lua.for_server`)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._forms: dict[lua.Version, tuple[str, str]] = {}

    def form(self, version: lua.Version) -> tuple[str, str]:
        """(source, sha) of the script for a server of `version`."""
        found = self._forms.get(version)
        if found is None:
            source = lua.for_server(self.source, version)
            sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            found = self._forms[version] = (source, sha)
        return found

    async def __call__(self, direct: Direct, args: Sequence[Any]) -> Any:
        source, sha = self.form(direct.version or await direct.server_version())
        try:
            return await direct.call("EVALSHA", sha, 0, *args)
        except redis.exceptions.NoScriptError:
            await direct.call("SCRIPT", "LOAD", source)
            return await direct.call("EVALSHA", sha, 0, *args)


class QueueFull(Exception):
    """MAX_BACKLOG refused a publish: nothing was written."""

    def __init__(self, queue: str, backlog: int, limit: int) -> None:
        super().__init__(f"queue {queue} has {backlog} waiting jobs; MAX_BACKLOG is {limit}")
        self.queue = queue
        self.backlog = backlog
        self.limit = limit


class Coalescer:
    """Single jobs published by concurrent requests, sent together.

    Every job added during one turn of the event loop goes in one call of `send` (one
    script: one round trip, one script run in Redis), made at the end of that turn (or once
    it holds MAX_BATCH_JOBS, as many as a `POST /jobs/batch` may); `send`
    gives each job's outcome (None, or the exception its own publish would have raised), and
    a failure of the call itself (Redis down, full) reaches every caller. Under load this is
    what a pipelining client (ioredis, under BullMQ) does; alone, a job waits one loop turn."""

    def __init__(
        self, send: Callable[[list[jobs.NewJob]], Awaitable[list[Exception | None]]]
    ) -> None:
        self._send = send
        self._jobs: list[jobs.NewJob] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def add(self, job: jobs.NewJob) -> None:
        loop = asyncio.get_running_loop()
        if not self._jobs:
            loop.call_soon(self._flush)
        waiting = loop.create_future()
        self._jobs.append(job)
        self._waiting.append(waiting)
        if len(self._jobs) >= constants.MAX_BATCH_JOBS:  # a script no longer than a batch's
            self._flush()
        await waiting

    def _flush(self) -> None:
        if not self._jobs:  # flushed already, full
            return
        batch, waiting = self._jobs, self._waiting
        self._jobs, self._waiting = [], []
        task = asyncio.ensure_future(self._publish(batch, waiting))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, batch: list[jobs.NewJob], waiting: list[asyncio.Future[None]]) -> None:
        try:
            outcomes = await self._send(batch)
        except Exception as exc:  # noqa: BLE001 - every caller gets it
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled: so are the callers, rather than wait forever
            for future in waiting:
                future.cancel()
            raise
        for future, outcome in zip(waiting, outcomes, strict=True):
            if future.done():  # its request was cancelled (shutdown)
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)


class Store:
    def __init__(
        self, client: aioredis.Redis, max_backlog: int = 0, retention: Retention = DEFAULT_RETENTION
    ) -> None:
        self.client = client
        self.max_backlog = max_backlog
        self.retention = retention.args()  # the CANCEL script's limits
        self.direct = Direct(client)
        self._publish = Script(scripts.PUBLISH)
        self._publish_once = Script(scripts.PUBLISH_ONCE)
        self._cancel = Script(scripts.CANCEL)
        self._publish_each = Script(scripts.PUBLISH_EACH)
        self._coalescer = Coalescer(self._send_each)

    async def publish(self, batch: Sequence[jobs.NewJob]) -> None:
        """Write every job and push it on its queue, all or nothing (one Lua script).

        Raises QueueFull (MAX_BACKLOG) with nothing written. A full Redis (maxmemory) refuses
        the script before its first write (see scripts._PUBLISH): nothing written either.
        """
        with tracing.enqueue(batch) as traceparent:
            args = jobs.publish_args(batch, time.time(), traceparent, self.max_backlog)
            reply = await self._publish(self.direct, args)
        if isinstance(reply, list):
            raise self._full(reply[0], reply[1])

    async def publish_soon(self, job: jobs.NewJob) -> None:
        """`publish([job])`, with the same outcome, but sent with the other single jobs
        published in the same turn of the event loop: one script call for all of them (see
        `Coalescer`). With tracing on each job keeps its own call (and enqueue span)."""
        if tracing.enabled():
            return await self.publish([job])
        await self._coalescer.add(job)

    async def _send_each(self, batch: list[jobs.NewJob]) -> list[Exception | None]:
        """Each job published as if alone (PUBLISH_EACH): None, or its QueueFull."""
        args = jobs.publish_args(batch, time.time(), "", self.max_backlog)
        replies = await self._publish_each(self.direct, args)
        return [None if reply == 1 else self._full(reply[0], reply[1]) for reply in replies]

    async def publish_once(
        self, job: jobs.NewJob, key: str, fingerprint: str, ttl: int
    ) -> tuple[str, str]:
        """Publish under an idempotency key, atomically: (job id, 'new' | 'same' | 'different').

        An existing key returns the id of the job it made, and whether `fingerprint` matches.
        Raises QueueFull as `publish` does.
        """
        with tracing.enqueue([job]) as traceparent:
            published = jobs.publish_args([job], time.time(), traceparent, self.max_backlog)
            reply = await self._publish_once(self.direct, [key, fingerprint, ttl, *published])
        if reply[1] == b"full":
            raise self._full(reply[0], reply[2])
        return reply[0].decode(), reply[1].decode()

    def _full(self, queue: bytes, backlog: int | bytes) -> QueueFull:
        """A script's MAX_BACKLOG refusal ({queue, backlog}) as the exception."""
        return QueueFull(jobs.as_text(queue), int(backlog), self.max_backlog)

    async def cancel(self, job_id: str) -> tuple[str, str]:
        """(canceled | canceling | conflict | missing, the job's status)."""
        now = time.time()
        args = [job_id, now, jobs.utc_iso(now), *self.retention]
        outcome, status = await self._cancel(self.direct, args)
        return outcome.decode(), status.decode()

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """The public view of a job, or None if Redis does not have it."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(constants.job_key(job_id))
            pipe.xrange(constants.result_key(job_id))
            fields, entries = await pipe.execute()
        if not fields:
            return None
        history = [jobs.decode_result_entry(entry) for _, entry in entries]
        return jobs.describe(job_id, fields, history)

    async def backlog(self, names: Iterable[str]) -> dict[str, Any]:
        """The work waiting for workers: queued jobs plus scheduled jobs already due, per queue
        and in total. Cheap (no scans): what autoscalers and alerts read."""
        queues = list(dict.fromkeys(names))
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(constants.queue_key(q))
                pipe.zcount(constants.registry_key("scheduled", q), "-inf", now)
            counts = await pipe.execute()
        waiting, due = counts[0::2], counts[1::2]
        per_queue = {q: w + d for q, w, d in zip(queues, waiting, due, strict=True)}
        return {
            "backlog": sum(per_queue.values()),
            "waiting": sum(waiting),
            "due_scheduled": sum(due),
            "queues": per_queue,
        }

    async def queues(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Per queue (`names` first, in order, then any other queue Redis knows): waiting,
        started, scheduled, finished, failed and live worker counts."""
        members = await self.client.smembers(constants.QUEUES_KEY)
        known = {jobs.as_text(key).removeprefix("rq:queue:") for key in members}
        listed = list(dict.fromkeys(names))
        queues = listed + sorted(known - set(listed))
        now = int(time.time())
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(constants.queue_key(q))
                pipe.zcard(constants.registry_key("started", q))
                pipe.zcard(constants.registry_key("scheduled", q))
                pipe.zcount(constants.registry_key("finished", q), now, "+inf")
                pipe.zcount(constants.registry_key("failed", q), now, "+inf")
                pipe.smembers(constants.queue_workers_key(q))
            counts = await pipe.execute()
        workers = [counts[i * 6 + 5] for i in range(len(queues))]
        async with self.client.pipeline(transaction=False) as pipe:
            for members in workers:
                for key in members:
                    pipe.exists(key)
            alive = iter(await pipe.execute())
        result = []
        for i, q in enumerate(queues):
            waiting, started, scheduled, finished, failed, _ = counts[i * 6 : i * 6 + 6]
            live = sum(next(alive) for _ in workers[i])
            result.append(
                {
                    "name": q,
                    "waiting": waiting,
                    "started": started,
                    "scheduled": scheduled,
                    "finished": finished,
                    "failed": failed,
                    "workers": live,
                }
            )
        return result
