"""The API's side of Redis: publish jobs (coalesced per loop turn), read a job, count queues
(async, one round trip each)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION, Retention
from service.jobs import records
from service.store.cancel import Cancel, Cancellation
from service.store.connection import Direct
from service.store.pause import Pause
from service.store.publish import Once, Publish, PublishEach, PublishOnce, Refused, Unknown
from service.telemetry import tracing


class QueueFull(Exception):
    """MAX_BACKLOG refused a publish: nothing was written."""

    def __init__(self, queue: str, backlog: int, limit: int) -> None:
        super().__init__(f"queue {queue} has {backlog} waiting jobs; MAX_BACKLOG is {limit}")
        self.queue = queue
        self.backlog = backlog
        self.limit = limit


class UnknownDependencies(Exception):
    """Parents named in depends_on that Redis does not hold: nothing was written."""

    def __init__(self, ids: tuple[str, ...]) -> None:
        super().__init__(f"no job with id {', '.join(ids)}")
        self.ids = ids


class Coalescer:
    """Single jobs published by concurrent requests, sent together.

    Every job added during one turn of the event loop goes in one call of `send` (one
    script: one round trip, one script run in Redis), made at the end of that turn (or once
    it holds MAX_BATCH_JOBS, as many as a `POST /jobs/batch` may); `send`
    gives each job's outcome (None, or the exception its own publish would have raised), and
    a failure of the call itself (Redis down, full) reaches every caller. Under load this is
    what a pipelining client (ioredis, under BullMQ) does; alone, a job waits one loop turn."""

    def __init__(
        self, send: Callable[[list[records.NewJob]], Awaitable[list[Exception | None]]]
    ) -> None:
        self._send = send
        self._jobs: list[records.NewJob] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def add(self, job: records.NewJob) -> None:
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

    async def _publish(
        self, batch: list[records.NewJob], waiting: list[asyncio.Future[None]]
    ) -> None:
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
        self,
        client: aioredis.Redis,
        max_backlog: int = 0,
        retention: Retention = DEFAULT_RETENTION,
        replicas: tuple[int, int] | None = None,  # DURABILITY=replicated: see `Direct`
    ) -> None:
        self.client = client
        self.max_backlog = max_backlog
        self.direct = Direct(client, replicas)
        self._publish = Publish()
        self._publish_once = PublishOnce()
        self._cancel = Cancel(retention)
        self._publish_each = PublishEach()
        self._pause = Pause()
        self._coalescer = Coalescer(self._send_each)

    async def publish(self, batch: Sequence[records.NewJob]) -> None:
        """Write every job and push it on its queue, all or nothing (one Lua script).

        Raises QueueFull (MAX_BACKLOG) with nothing written. A full Redis (maxmemory) refuses
        the script before its first write (see _publish_jobs.lua): nothing written either.
        """
        with tracing.enqueue(batch) as traceparent:
            refused = await self._publish(
                self.direct, batch, time.time(), traceparent, self.max_backlog
            )
        if refused is not None:
            raise self._full(refused)

    async def publish_soon(self, job: records.NewJob) -> None:
        """`publish([job])`, with the same outcome, but sent with the other single jobs
        published in the same turn of the event loop: one script call for all of them (see
        `Coalescer`). With tracing on each job keeps its own call (and enqueue span), and so
        does a job with parents (its unknown ones are its own 422)."""
        if tracing.enabled() or job.depends_on:
            return await self.publish([job])
        await self._coalescer.add(job)

    async def _send_each(self, batch: list[records.NewJob]) -> list[Exception | None]:
        """Each job published as if alone (PUBLISH_EACH): None, or its QueueFull."""
        refusals = await self._publish_each(self.direct, batch, time.time(), self.max_backlog)
        return [None if refused is None else self._full(refused) for refused in refusals]

    async def publish_once(
        self, job: records.NewJob, key: str, fingerprint: str, ttl: int
    ) -> tuple[str, str]:
        """Publish under an idempotency key, atomically: (job id, 'new' | 'same' | 'different').

        An existing key returns the id of the job it made, and whether `fingerprint` matches.
        Raises QueueFull as `publish` does.
        """
        with tracing.enqueue([job]) as traceparent:
            once = await self._publish_once(
                self.direct, job, key, fingerprint, ttl, time.time(), traceparent, self.max_backlog
            )
        if not isinstance(once, Once):
            raise self._full(once)
        return once.id, once.match

    def _full(self, refused: Refused | Unknown) -> QueueFull | UnknownDependencies:
        """The exception a refused publish raises."""
        if isinstance(refused, Unknown):
            return UnknownDependencies(refused.ids)
        return QueueFull(refused.queue, refused.backlog, self.max_backlog)

    async def cancel(self, job_id: str) -> tuple[str, str]:
        """(canceled | canceling | conflict | missing, the job's status)."""
        cancellation: Cancellation = await self._cancel(self.direct, job_id, time.time())
        return cancellation.result, cancellation.status

    async def set_paused(self, base: str, paused: bool) -> bool:
        """Pause or resume the named queue `base` (its three priorities); whether its state
        changed."""
        return await self._pause(self.direct, base, paused)

    async def statuses(self, job_ids: list[str]) -> list[str | None]:
        """The status of each job (None for one Redis does not have): one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(constants.job_key(job_id), "status")
            found = await pipe.execute()
        return [status.decode() if status is not None else None for status in found]

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """The public view of a job, or None if Redis does not have it."""
        view, _ = await self.job_and_cursor(job_id)
        return view

    async def job_and_cursor(self, job_id: str) -> tuple[dict[str, Any] | None, str]:
        """`job(job_id)`, and the id of the last entry of its results stream ('0-0' if none):
        where a wait for its next transition reads from. The cursor is read before the job:
        an ending between the two reads shows in the job's status, never only past the cursor
        (a wait would then sit after the final entry). Not in a MULTI, which a full Redis
        refuses even for reads; the entries shown are read after the job."""
        key = constants.result_key(job_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xrevrange(key, count=1)
            pipe.hgetall(constants.job_key(job_id))
            pipe.xrange(key)
            last, fields, entries = await pipe.execute()
        if not fields:
            return None, "0-0"
        history = [records.decode_result_entry(entry) for _, entry in entries]
        cursor = last[0][0].decode() if last else "0-0"
        return records.describe(job_id, fields, history), cursor

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
        """Per queue (`names` first, in order, then any other queue Redis knows or holds
        paused): waiting, started, scheduled, finished, failed and live worker counts, and
        whether it is paused."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(constants.QUEUES_KEY)
            pipe.smembers(constants.PAUSED_KEY)
            members, paused_members = await pipe.execute()
        known = {constants.queue_of_key(key) for key in members}
        paused = {records.as_text(member) for member in paused_members}
        listed = list(dict.fromkeys(names))
        queues = listed + sorted((known | paused) - set(listed))
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
                    "paused": q in paused,
                }
            )
        return result
