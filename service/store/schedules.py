"""SCHEDULE_PUT and SCHEDULE_FIRE (schedule_put.lua, schedule_fire.lua): schedules kept in
Redis, and each of their fire times claimed by exactly one container, which publishes its
jobs as ordinary RQ jobs (the `publish` fragment: history, metrics and retries as for any).
And the API's: SCHEDULE_CREATE, SCHEDULE_UPDATE, SCHEDULE_PAUSE, SCHEDULE_DELETE (`Book`).

A schedule is `schedule_key(id)`, a hash (its definition as JSON, its next and last fire
times, how late its last fire was published, how many jobs it published and how many fires
its misfire policy dropped; `origin`
'api' for one created through the API, none for one the code declares; `pause` while
paused), and its entry in SCHEDULES_KEY, scored by its next fire time (+inf while paused):
due schedules are one range query.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
import redis
import redis.asyncio as aioredis

from service.config import constants, queues
from service.jobs import records, schedule
from service.jobs.records import NewJob
from service.jobs.registry import JobType
from service.jobs.schedule import Schedule
from service.store import lua, scripts
from service.store.connection import Direct, Script
from service.store.publish import publish_args

Put = Literal["new", "same", "changed", "taken"]  # taken: the id is an API schedule's
Origin = Literal["code", "api"]


class UnreadableSchedule(ValueError):
    """A stored definition this code cannot read."""


@dataclass(frozen=True, slots=True)
class Definition:
    """A schedule and the job it publishes at each fire time, every policy resolved."""

    id: str  # `<job type>/<schedule key>`
    type: str
    queue: str  # the RQ queue, priority applied
    timeout: int
    max_retries: int
    backoff: str  # the Backoff policy as JSON
    result_ttl: int
    failure_ttl: int
    schedule: Schedule

    @classmethod
    def of(cls, job_type: JobType, declared: Schedule, default_queue: str) -> Definition:
        """The schedule `declared` of `job_type`, publishing with the type's policies."""
        return cls(
            schedule.schedule_id(job_type.name, declared),
            job_type.name,
            queues.concrete(job_type.queue or default_queue, job_type.priority),
            job_type.timeout,
            job_type.max_retries,
            job_type.backoff.to_json(),
            job_type.result_ttl,
            job_type.failure_ttl,
            declared,
        )

    def to_json(self) -> bytes:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        when = self.schedule.when()
        fields["schedule"] = {**when, "payload": self.schedule.payload, "name": self.schedule.name}
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Definition:
        """The definition SCHEDULE_PUT stored; UnreadableSchedule for one this code cannot
        read (written by another version of it, or by hand)."""
        try:
            fields: dict[str, Any] = orjson.loads(raw)
            fields["schedule"] = Schedule(**fields["schedule"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError) as exc:
            raise UnreadableSchedule(str(exc)) from None

    def job(self, fire_time: int) -> NewJob:
        """The job of one fire time, queued at once."""
        return NewJob(
            schedule.fire_job_id(self.id, fire_time),
            self.type,
            self.queue,
            dict(self.schedule.payload),
            self.timeout,
            self.max_retries,
            self.backoff,
            self.result_ttl,
            self.failure_ttl,
        )


@dataclass(frozen=True, slots=True)
class Fired:
    """What one firing did: `fired` (this caller claimed the fire time), `lost` (another
    container had, or the schedule changed) or `unreadable` (its stored definition: left
    alone, for a container that reads it), and how many jobs it published."""

    id: str
    outcome: Literal["fired", "lost", "unreadable"]
    published: int
    missed: int = 0  # fire times the misfire policy dropped


class PutSchedule:
    """SCHEDULE_PUT: declare a schedule; an unchanged one keeps its next fire time."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = lua.Script(client, scripts.SCHEDULE_PUT)

    def __call__(self, definition: Definition, now: float) -> Put:
        first = schedule.next_fire(definition.schedule, now)
        reply = self._script([definition.id, definition.to_json(), first])
        answer: Put = records.as_text(reply)  # type: ignore[assignment]
        return answer


class FireSchedule:
    """SCHEDULE_FIRE: claim the fire of a due schedule and publish its jobs."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = lua.Script(client, scripts.SCHEDULE_FIRE)

    def __call__(self, definition: Definition, due: int, now: float) -> Fired:
        """Fire `definition`, whose next fire time `due` has come, by its misfire policy."""
        planned = schedule.plan(definition.schedule, due, now)
        jobs = [definition.job(moment) for moment in planned.fire]
        last = planned.fire[-1] if planned.fire else ""
        lateness = f"{now - planned.fire[-1]:.3f}" if planned.fire else ""
        args = [definition.id, due, planned.next, last, planned.missed, lateness]
        # No MAX_BACKLOG (0): a fire has no caller to answer 429 to, and a later tick could
        # not tell a refused fire from a lost one, so a fire is published however long the
        # queue, as Celery beat and Sidekiq's cron publish. The backlog shows it on /metrics.
        outcome, published = self._script([*args, *publish_args(jobs, now, max_backlog=0)])
        if outcome == b"lost":
            return Fired(definition.id, "lost", 0)
        return Fired(definition.id, "fired", int(published), planned.missed)


def due(client: redis.Redis, now: float, limit: int) -> list[tuple[str, int]]:
    """The schedules whose next fire time has come (id, that time), the most overdue first."""
    rows = cast(
        "list[tuple[bytes, float]]",
        client.zrangebyscore(
            constants.SCHEDULES_KEY, "-inf", now, start=0, num=limit, withscores=True
        ),
    )
    return [(records.as_text(member), int(score)) for member, score in rows]


def definition(client: redis.Redis, schedule_id: str) -> Definition | None:
    """A schedule's definition; None once it is gone."""
    raw = client.hget(constants.schedule_key(schedule_id), "spec")
    return None if raw is None else Definition.from_json(raw)


class Schedules:
    """The schedules of one Redis, for a container's scheduler: declare, then fire when due."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.put = PutSchedule(client)
        self.fire = FireSchedule(client)

    def declare(self, definitions: Sequence[Definition], now: float) -> list[Put]:
        """Declare each schedule (SCHEDULE_PUT)."""
        return [self.put(one, now) for one in definitions]

    def retire(self, job_types: Collection[str], keep: Collection[str]) -> list[str]:
        """Remove the schedules of `job_types` that the code declared and are not in `keep`:
        declarations taken out of the code, or changed (an unnamed schedule's name is a digest
        of it); those created through the API stay. Returns their ids. A fire racing the
        removal finds its schedule gone and publishes nothing."""
        members = self.client.zscan_iter(constants.SCHEDULES_KEY)
        ids = [records.as_text(member) for member, _score in members]
        candidates = [i for i in ids if i.split("/", 1)[0] in job_types and i not in keep]
        if not candidates:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for i in candidates:
                pipe.hget(constants.schedule_key(i), "origin")
            origins = pipe.execute()
        gone = [i for i, origin in zip(candidates, origins, strict=True) if origin != b"api"]
        if gone:
            with self.client.pipeline() as pipe:
                pipe.zrem(constants.SCHEDULES_KEY, *gone)
                pipe.delete(*(constants.schedule_key(i) for i in gone))
                pipe.execute()
        return gone

    def fire_due(self, now: float, limit: int = constants.SCHEDULE_BATCH) -> list[Fired]:
        """Fire every due schedule (at most `limit`): one round trip lists them, then one
        read and one SCHEDULE_FIRE each. Any number of containers may run it at once."""
        fired: list[Fired] = []
        for schedule_id, at in due(self.client, now, limit):
            try:
                found = definition(self.client, schedule_id)
            except UnreadableSchedule:
                fired.append(Fired(schedule_id, "unreadable", 0))
                continue
            if found is not None:
                fired.append(self.fire(found, at, now))
        return fired


@dataclass(frozen=True, slots=True)
class Stored:
    """A schedule as Redis holds it: its definition (None when this code cannot read it) and
    its state. `next` is the fire time it waits for (kept while paused), `last` the latest it
    published a job for."""

    id: str
    definition: Definition | None
    origin: Origin
    paused: bool
    next: int | None
    last: int | None
    fired: int
    missed: int

    @classmethod
    def read(cls, schedule_id: str, fields: dict[bytes, bytes]) -> Stored:
        try:
            found: Definition | None = Definition.from_json(fields[b"spec"])
        except UnreadableSchedule:
            found = None

        def number(name: bytes) -> int | None:
            raw = fields.get(name)
            return None if raw is None or raw == b"" else int(raw)

        return cls(
            schedule_id,
            found,
            "api" if fields.get(b"origin") == b"api" else "code",
            b"pause" in fields,
            number(b"next"),
            number(b"last"),
            number(b"fired") or 0,
            number(b"missed") or 0,
        )


Created = Literal["created", "exists"]
# A place in the listing's order: a schedule's score (its next fire time; inf while paused)
# and its id (Redis orders members of one score by their bytes, as Python orders ASCII text).
Position = tuple[float, str]
Changed = Literal["updated", "deleted", "missing", "code"]  # code: declared in the code


class Book:
    """The schedules of one Redis, for the API: list and read them, create, change, pause,
    resume and delete one. Every change is one script, atomic against the containers' fires."""

    _create = Script(scripts.SCHEDULE_CREATE)
    _update = Script(scripts.SCHEDULE_UPDATE)
    _pause = Script(scripts.SCHEDULE_PAUSE)
    _delete = Script(scripts.SCHEDULE_DELETE)

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.direct = Direct(client)

    async def get(self, schedule_id: str) -> Stored | None:
        key = constants.schedule_key(schedule_id)
        fields = cast("dict[bytes, bytes]", await self.client.hgetall(key))
        return Stored.read(schedule_id, fields) if b"spec" in fields else None

    async def list(self) -> list[Stored]:
        """Every schedule, the soonest due first, the paused ones last."""
        members = cast("list[bytes]", await self.client.zrange(constants.SCHEDULES_KEY, 0, -1))
        ids = [records.as_text(member) for member in members]
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(constants.schedule_key(i))
            rows = await pipe.execute()
        # One deleted between the two reads is left out.
        return [Stored.read(i, row) for i, row in zip(ids, rows, strict=True) if b"spec" in row]

    async def page(
        self, limit: int, after: Position | None
    ) -> tuple[Sequence[Stored], Position | None]:
        """Up to `limit` schedules after `after` in the listing's order (next fire time, then
        id; the paused last), and the position of the last one when more follow (else None).
        Those this code cannot read are left out, so a page may hold fewer."""
        if after is None:
            rows = await self._range("-inf", limit + 1)
        else:
            score, last = after
            bound = "+inf" if score == math.inf else str(int(score))
            ties = await self._range(bound, None, bound)
            rows = [row for row in ties if records.as_text(row[0]) > last][: limit + 1]
            if len(rows) <= limit and score != math.inf:
                rows = [*rows, *await self._range(f"({bound}", limit + 1 - len(rows))]
        more, rows = len(rows) > limit, rows[:limit]
        ids = [records.as_text(member) for member, _ in rows]
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(constants.schedule_key(i))
            found = await pipe.execute()
        page = [Stored.read(i, row) for i, row in zip(ids, found, strict=True) if b"spec" in row]
        return page, (float(rows[-1][1]), ids[-1]) if more else None

    async def _range(
        self, low: str, count: int | None, high: str = "+inf"
    ) -> Sequence[tuple[bytes, float]]:
        """Schedules (id, score) scored from `low` to `high`, in order; at most `count`."""
        key = constants.SCHEDULES_KEY
        if count is None:
            found = await self.client.zrangebyscore(key, low, high, withscores=True)
        else:
            found = await self.client.zrangebyscore(
                key, low, high, start=0, num=count, withscores=True
            )
        return cast("Sequence[tuple[bytes, float]]", found)

    async def create(self, definition: Definition, now: float) -> Created:
        first = schedule.next_fire(definition.schedule, now)
        args = [definition.id, definition.to_json(), first]
        answer: Created = records.as_text(await self._create(self.direct, args))  # type: ignore[assignment]
        return answer

    async def update(self, definition: Definition, now: float) -> Changed:
        first = schedule.next_fire(definition.schedule, now)
        args = [definition.id, definition.to_json(), first]
        answer: Changed = records.as_text(await self._update(self.direct, args))  # type: ignore[assignment]
        return answer

    async def set_paused(self, schedule_id: str, paused: bool) -> bool:
        """Pause or resume one schedule; False when there is none."""
        answer = await self._pause(self.direct, [schedule_id, "1" if paused else "0"])
        return records.as_text(answer) == "done"

    async def delete(self, schedule_id: str) -> Changed:
        answer: Changed = records.as_text(await self._delete(self.direct, [schedule_id]))  # type: ignore[assignment]
        return answer
