"""The dead-letter queue's side of Redis: failed jobs (RQ's failed registries), read in pages,
retried or deleted by Lua scripts (dead_retry.lua, dead_delete.lua). Async, like publisher.py.

A dead job is one in its queue's failed registry (`failed_key`) with status `failed`. The
registries are read in pages (ZREVRANGEBYSCORE) and merged across queues into one order:
registry score descending (the score is the failure time plus the job's failure_ttl, so this
is newest failure first among jobs that share a failure_ttl), then id descending. A position
in that order, `(score, id)`, is what a cursor holds: removals behind or ahead of it shift
nothing. The keyspace itself is never scanned.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from service.config import constants
from service.jobs import records
from service.jobs.states import Status
from service.store import lua, scripts

_FIELDS = ("status", "ended_at", "data", "attempts", "crashes")

Position = tuple[float, str]  # (registry score, job id): how far a walk has got

_FAILED = Status.FAILED.encode()  # a dead job's status field


class _Entry(NamedTuple):
    score: float
    id: str
    queue: str


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead jobs an operation applies to; a field left None matches every job."""

    type: str | None = None  # an exact job type, or a prefix ending in '*' (`email.*`)
    queue: str | None = None  # one RQ queue (`emails.high`)
    error: str | None = None  # case-insensitive substring of the last attempt's error text
    since: float | None = None  # failure time (`ended_at`), epoch seconds, inclusive
    until: float | None = None

    @property
    def empty(self) -> bool:
        fields = (self.type, self.queue, self.error, self.since, self.until)
        return all(value is None for value in fields)

    def admits(self, job: DeadJob) -> bool:
        """Everything but `error`, which needs the job's last result."""
        if self.type is not None:
            if job.type is None:
                return False
            if self.type.endswith("*"):
                if not job.type.startswith(self.type[:-1]):
                    return False
            elif job.type != self.type:
                return False
        if self.queue is not None and job.queue != self.queue:
            return False
        if self.since is None and self.until is None:
            return True
        if job.failed_epoch is None:
            return False
        return (self.since is None or job.failed_epoch >= self.since) and (
            self.until is None or job.failed_epoch <= self.until
        )

    def admits_error(self, text: str | None) -> bool:
        return self.error is None or self.error.casefold() in (text or "").casefold()


@dataclass(frozen=True, slots=True)
class DeadJob:
    id: str
    queue: str
    position: Position
    type: str | None  # None when the job's data is not ours (another serializer's)
    payload: Any
    failed_at: str | None  # RQ's timestamp, as stored
    failed_epoch: float | None
    attempts: int
    crashes: int
    reason: str | None = None  # of the last attempt: exception, timeout or worker_lost
    error_text: str | None = None  # the last attempt's whole traceback text

    def view(self) -> dict[str, Any]:
        """The job as GET /dead lists it."""
        return {
            "id": self.id,
            "type": self.type,
            "queue": self.queue,
            "failed_at": self.failed_at,
            "expires_at": records.utc_iso(self.position[0]),
            "attempts": self.attempts,
            "crashes": self.crashes,
            "reason": self.reason,
            "error": records.error_summary(self.error_text) if self.error_text else None,
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class Retried:
    """DEAD_RETRY's reply: the jobs put back on their queues (those still dead), each with its
    queue."""

    queues: Mapping[str, str]  # job id -> the queue it is back on

    def __len__(self) -> int:
        return len(self.queues)


@dataclass(frozen=True, slots=True)
class Deleted:
    """DEAD_DELETE's reply: how many of the jobs were still dead, and are gone."""

    count: int


class DeadLetters:
    """The dead-letter queue's Redis side: built once per process, in the API's lifespan."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._retry = lua.ScriptAsync(client, scripts.DEAD_RETRY)
        self._delete = lua.ScriptAsync(client, scripts.DEAD_DELETE)

    async def queues(self, served: Iterable[str]) -> list[str]:
        """Every RQ queue that may hold dead jobs: `served`, and every queue Redis knows."""
        members = await self.client.smembers(constants.QUEUES_KEY)
        known = {constants.queue_of_key(key) for key in members}
        return sorted(known | set(served))

    async def page(
        self, queues: Sequence[str], where: Filter, limit: int, after: Position | None
    ) -> tuple[list[DeadJob], Position | None]:
        """Up to `limit` matching jobs after `after`, and the position to go on from (None at
        the end; a page that ends just before the end may still give one). At most DEAD_LIST_BUDGET
        entries are examined: a sparse filter may return fewer jobs, even none, and a position
        to go on from."""
        walk = _Walk(self.client, queues, after)
        found: list[DeadJob] = []
        examined, step = 0, 10
        while True:
            # Read about as many jobs as are still wanted (a small page reads few payloads),
            # more each round while a filter keeps rejecting them.
            want = min(
                max(limit - len(found), step),
                constants.DEAD_FIELDS_PAGE,
                constants.DEAD_LIST_BUDGET - examined,
            )
            entries = await walk.take(want)
            if not entries:
                return found, None
            examined, step = examined + len(entries), step * 2
            matches = await self._select(entries, where, details=True)
            for n, job in enumerate(matches):
                found.append(job)
                if len(found) == limit:
                    more = n + 1 < len(matches) or not walk.exhausted
                    return found, job.position if more else None
            if examined >= constants.DEAD_LIST_BUDGET:
                return found, (entries[-1].score, entries[-1].id)

    def sweep(self, queues: Sequence[str], where: Filter, after: Position | None) -> Sweep:
        """A bulk action's share of the dead jobs: see `Sweep`."""
        return Sweep(self, queues, where, after)

    async def retry(self, ids: Sequence[str]) -> Retried:
        """Put these jobs back on their queues as new, those still dead (one script). The
        caller checks every id against RQ's id rule."""
        if not ids:
            return Retried({})
        queues = await self._retry([records.utc_iso(), *ids])
        pairs = zip(ids, queues, strict=True)
        return Retried({job_id: records.as_text(q) for job_id, q in pairs if q})

    async def delete(self, ids: Sequence[str]) -> Deleted:
        """Delete these jobs, those still dead (one script)."""
        return Deleted(int(await self._delete(ids)) if ids else 0)

    async def _select(
        self, entries: Sequence[_Entry], where: Filter, *, details: bool
    ) -> list[DeadJob]:
        """The entries' jobs that are dead and match `where`: fields in one pipeline, then
        (for details or an error filter) the last result of each in another."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hmget(constants.job_key(entry.id), _FIELDS)
            rows = await pipe.execute()
        candidates = []
        for entry, (status, ended_at, data, attempts, crashes) in zip(entries, rows, strict=True):
            if status != _FAILED:  # expired, deleted or retried since the registry said so
                continue
            job_type, payload = records.read_data(data)
            failed_at = ended_at.decode() if ended_at else None
            job = DeadJob(
                id=entry.id,
                queue=entry.queue,
                position=(entry.score, entry.id),
                type=job_type,
                payload=payload,
                failed_at=failed_at,
                failed_epoch=records.epoch(failed_at),
                attempts=int(attempts or 0),
                crashes=int(crashes or 0),
            )
            if where.admits(job):
                candidates.append(job)
        if not candidates or not (details or where.error is not None):
            return candidates
        async with self.client.pipeline(transaction=False) as pipe:
            for job in candidates:
                pipe.xrevrange(constants.result_key(job.id), count=1)
            lasts = await pipe.execute()
        selected = []
        for job, last in zip(candidates, lasts, strict=True):
            result = records.decode_result_entry(last[0][1]) if last else {}
            error_text = result.get("error")
            if where.admits_error(error_text):
                selected.append(replace(job, reason=result.get("reason"), error_text=error_text))
        return selected


class Sweep:
    """What one bulk request (retry or delete by filter) goes through: the matching jobs after
    `after`, one page of DEAD_FIELDS_PAGE registry entries at a time (a page may match none),
    over at most DEAD_LIST_BUDGET entries, so a request's work is bounded whatever the filter.
    The jobs come without `reason` and `error_text` unless the filter needed them.

    Once the pages are read (or the caller stops), `examined` is how many entries were, and
    `position` where the next request goes on from (None: the end was reached)."""

    def __init__(
        self, dead: DeadLetters, queues: Sequence[str], where: Filter, after: Position | None
    ) -> None:
        self._dead = dead
        self._walk = _Walk(dead.client, queues, after)
        self._where = where
        self.examined = 0
        self.position: Position | None = None

    async def pages(self) -> AsyncGenerator[list[DeadJob], None]:
        budget = constants.DEAD_LIST_BUDGET
        while self.examined < budget:
            entries = await self._walk.take(min(constants.DEAD_FIELDS_PAGE, budget - self.examined))
            if not entries:
                self.position = None
                return
            self.examined += len(entries)
            self.position = (entries[-1].score, entries[-1].id)
            yield await self._dead._select(entries, self._where, details=False)
        if self._walk.exhausted:
            self.position = None


class _Walk:
    """The failed registries of `queues`, merged into one order (score, then id, descending:
    ZREVRANGE's order), from just after `after`. Only unexpired entries (score >= now)."""

    def __init__(self, client: aioredis.Redis, queues: Sequence[str], after: Position | None):
        self.client = client
        self.now = time.time()
        self.bounds: dict[str, Position | None] = dict.fromkeys(queues, after)
        self.buffers: dict[str, deque[_Entry]] = {q: deque() for q in queues}
        self.open = list(queues)  # queues whose registry may hold entries not read yet

    @property
    def exhausted(self) -> bool:
        return not self.open and not any(self.buffers.values())

    async def take(self, count: int) -> list[_Entry]:
        taken: list[_Entry] = []
        while len(taken) < count:
            await self._fill()
            heads = {q: buffer for q, buffer in self.buffers.items() if buffer}
            if not heads:
                break
            while len(taken) < count and heads:
                q = max(heads, key=lambda name: heads[name][0])
                taken.append(heads[q].popleft())
                if not heads[q]:
                    if q in self.open:
                        break  # read its next page before merging on
                    del heads[q]
        return taken

    async def _fill(self) -> None:
        """One page for every open queue whose buffer is empty (one pipeline per round)."""
        need = [q for q in self.open if not self.buffers[q]]
        skip = dict.fromkeys(need, 0)
        while need:
            async with self.client.pipeline(transaction=False) as pipe:
                for q in need:
                    bound = self.bounds[q]
                    pipe.zrevrangebyscore(
                        constants.registry_key("failed", q),
                        "+inf" if bound is None else repr(bound[0]),
                        repr(self.now),
                        start=skip[q],
                        num=constants.DEAD_REGISTRY_PAGE,
                        withscores=True,
                    )
                pages = await pipe.execute()
            again = []
            for q, rows in zip(need, pages, strict=True):
                bound = self.bounds[q]
                # The bound's score is read inclusively: drop the ties at it already passed.
                fresh = [
                    entry
                    for entry in (
                        _Entry(score, records.as_text(member), q) for member, score in rows
                    )
                    if bound is None or (entry.score, entry.id) < bound
                ]
                if len(rows) < constants.DEAD_REGISTRY_PAGE:
                    self.open.remove(q)
                if fresh:
                    self.buffers[q].extend(fresh)
                    self.bounds[q] = (fresh[-1].score, fresh[-1].id)
                elif q in self.open:  # a whole page of ties already passed: read further
                    skip[q] += constants.DEAD_REGISTRY_PAGE
                    again.append(q)
            need = again
