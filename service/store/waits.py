"""Long-polls (`GET /jobs/{id}?wait=`): requests waiting for jobs to end, all served by one
Redis connection.

Every transition into a final state (finished, dead-lettered, canceled, a crash that used up
MAX_CRASHES) adds an entry to the job's results stream (`add_result` in _transitions.lua),
whoever makes it: a worker's COMPLETE, the API's cancel, a container's recovery, an RQ worker.
So one task blocks in `XREAD` on the streams of every job a request waits for, from the last
entry each request saw, and on an entry reads the job's status (one pipeline for all the jobs
that had one). A request that arrives while the read blocks interrupts it (`CLIENT UNBLOCK`
from the API's ordinary connection), so the next read includes its stream at once; the read
never blocks longer than WAIT_BLOCK_SECONDS, so a request that arrived just before the read
reached Redis waits that long at most to be included (and misses nothing meanwhile: it reads
from its own last entry). No connection is held per request, and Redis is not polled: with
nothing happening, a process sends one command per WAIT_BLOCK_SECONDS while requests wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import RedisTarget
from service.jobs.states import Status
from service.store import connection

log = logging.getLogger("service.api")

FINAL = frozenset({Status.FINISHED.value, Status.FAILED.value, Status.CANCELED.value})


class Waits:
    """The jobs requests wait for. Cheap to build; `start()` connects, `close()` ends it all;
    `release_all()` (safe from a signal handler) answers every waiting request at once."""

    def __init__(self, target: RedisTarget) -> None:
        self._target = target
        self._reader: aioredis.Redis | None = None  # the blocking connection
        self._client: aioredis.Redis | None = None  # the API's own: status reads, UNBLOCK
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}  # by job id
        self._cursor: dict[str, str] = {}  # by job id: the last results entry seen
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader_id: int | None = None  # CLIENT ID of the blocking connection
        self._blocked = False  # a read is on its way or blocking, on the current key set
        self._unblocking = False
        self._unblocker: asyncio.Future[None] | None = None  # kept: the loop's ref is weak
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    def start(self, client: aioredis.Redis) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        # Its socket timeout is above the longest block, so a blocked read is never cut short.
        # One connection (a pool of one), as every client reaches Redis: TLS, Sentinel.
        self._reader = connection.connect_async(
            self._target,
            max_connections=1,
            socket_timeout=constants.WAIT_BLOCK_SECONDS + constants.REDIS_SOCKET_TIMEOUT,
        )
        self._task = asyncio.create_task(self._serve())

    async def close(self) -> None:
        self.closing = True
        self._release()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            await self._reader.aclose()

    def release_all(self) -> None:
        """Answer every waiting request now (shutdown: they return the job as it is, rather
        than hold the graceful stop up to their wait). Thread- and signal-safe."""
        self.closing = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    @property
    def waiting(self) -> int:
        """How many requests wait now."""
        return sum(len(futures) for futures in self._waiting.values())

    async def until_final(self, job_id: str, cursor: str, timeout: float) -> None:
        """Return once the job has reached a final state (or its hash is gone), or after
        `timeout` seconds. `cursor`: the id of the last results entry the caller saw
        ('0-0' if none): whatever comes after it counts."""
        if self.closing or self._task is None or timeout <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        futures = self._waiting.setdefault(job_id, set())
        futures.add(future)
        if job_id not in self._cursor or _after(self._cursor[job_id], cursor):
            self._cursor[job_id] = cursor
        self._changed.set()
        self._interrupt()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            futures.discard(future)
            if not futures:
                del self._waiting[job_id]
                self._cursor.pop(job_id, None)

    def _interrupt(self) -> None:
        """A new stream to read: interrupt a blocked read, once, so the next includes it."""
        if self._blocked and not self._unblocking and self._reader_id is not None:
            self._unblocking = True
            self._unblocker = asyncio.ensure_future(self._unblock(self._reader_id))

    async def _unblock(self, reader_id: int) -> None:
        assert self._client is not None
        try:
            await self._client.execute_command("CLIENT", "UNBLOCK", reader_id)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:  # the read ends at its block time anyway
            log.debug("long-poll: CLIENT UNBLOCK failed: %s", exc)
        finally:
            self._unblocking = False

    async def _serve(self) -> None:
        backoff = 0.1
        while True:
            if not self._waiting:
                self._changed.clear()
                await self._changed.wait()
            try:
                await self._read_once()
                backoff = 0.1
            except redis.RedisError as exc:  # Redis down: requests answer at their deadline
                log.debug("long-poll: Redis unavailable: %s", exc)
                self._reader_id = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, constants.WAIT_BLOCK_SECONDS)

    async def _read_once(self) -> None:
        assert self._reader is not None and self._client is not None
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
        streams = {constants.result_key(job_id): cursor for job_id, cursor in self._cursor.items()}
        self._changed.clear()
        self._blocked = True
        try:
            reply: Any = await self._reader.xread(
                streams,  # type: ignore[arg-type]
                block=int(constants.WAIT_BLOCK_SECONDS * 1000),
            )
        finally:
            self._blocked = False
        moved = []
        for key, entries in reply or []:
            job_id = (key.decode() if isinstance(key, bytes) else key).removeprefix(
                constants.result_key("")
            )
            if job_id in self._cursor and entries:
                last = entries[-1][0]
                self._cursor[job_id] = last.decode() if isinstance(last, bytes) else last
                moved.append(job_id)
        if moved:
            await self._settle(moved)

    async def _settle(self, job_ids: Iterable[str]) -> None:
        """Answer the requests of each job that has reached a final state, or is gone."""
        assert self._client is not None
        ids = list(job_ids)
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(constants.job_key(job_id), "status")
            statuses = await pipe.execute()
        for job_id, status in zip(ids, statuses, strict=True):
            if status is None or status.decode() in FINAL:
                for future in self._waiting.get(job_id, ()):
                    if not future.done():
                        future.set_result(None)


def _after(first: str, second: str) -> bool:
    """Whether stream id `first` comes after `second` ('<ms>-<seq>')."""

    def parts(entry: str) -> tuple[int, int]:
        ms, _, seq = entry.partition("-")
        return int(ms), int(seq or 0)

    return parts(first) > parts(second)
