"""SCHEDULE_PUT and SCHEDULE_FIRE (schedule_put.lua, schedule_fire.lua): schedules kept in
Redis, and each of their fire times claimed by exactly one container, which publishes its
jobs as ordinary RQ jobs (the `publish` fragment: history, metrics and retries as for any).

A schedule is `schedule_key(id)`, a hash (its definition as JSON, its next and last fire
times, how many jobs it published and how many fires its misfire policy dropped), and its
entry in SCHEDULES_KEY, scored by its next fire time: due schedules are one range query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
import redis

from service.config import constants
from service.jobs import records, schedule
from service.jobs.records import NewJob
from service.jobs.schedule import Schedule
from service.store import lua, scripts
from service.store.publish import publish_args

Put = Literal["new", "same", "changed"]


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
        args = [definition.id, due, planned.next, last, planned.missed]
        outcome, published = self._script([*args, *publish_args(jobs, now)])
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
        """Remove the schedules of `job_types` that are not in `keep`: declarations taken out
        of the code, or changed (an unnamed schedule's name is a digest of it). Returns their
        ids. A fire racing the removal finds its schedule gone and publishes nothing."""
        members = self.client.zscan_iter(constants.SCHEDULES_KEY)
        ids = [records.as_text(member) for member, _score in members]
        gone = [i for i in ids if i.split("/", 1)[0] in job_types and i not in keep]
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
