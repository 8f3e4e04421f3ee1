"""Schedules: when a job type runs by itself, on a cron expression or at a fixed interval.

Pure time arithmetic, no I/O: `Schedule` is what `@job(schedule=...)` declares, `fire_times`
walks its fire times and `plan` decides, for a schedule that fell due, which fire times to
publish now (the misfire policy) and when it is next due. The store claims each fire
atomically (service/store/schedules.py); the worker's scheduler thread drives it.

Cron expressions are read by cronsim, which follows Debian's cron on daylight-saving changes;
so does every schedule here:

- a local time that does not exist (the clocks jump over it) fires at the next valid instant,
  the jump's end (02:30 on the day New York springs forward fires at 03:00 EDT);
- a local time that happens twice (the clocks fall back over it) fires once, at its first
  occurrence;
- a field that is a wildcard or a step in the hour (`*/15 * * * *`) keeps its pace in
  elapsed time across the change.

Interval schedules (`every`) count whole seconds from the Unix epoch, so every container
computes the same fire times without sharing any state: `every=60` fires on the minute,
`every=3600` on the hour (UTC).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from cronsim import CronSim, CronSimError

from service.config import constants

Misfire = Literal["skip", "fire_once", "catch_up"]
MISFIRE_POLICIES: tuple[Misfire, ...] = ("skip", "fire_once", "catch_up")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a schedule's name, within its job type


# A schedule's timing and misfire policy, as stored and shown: its fields but the payload and name.
_TIMING = ("cron", "every", "timezone", "misfire", "catch_up_max", "grace")


class ScheduleInvalid(ValueError):
    """A schedule that cannot run: a bad expression, time zone, interval or policy."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a job type runs by itself: `cron` (five fields, in `timezone`) or `every` seconds.

    `misfire` says what happens to fire times missed by more than SCHEDULE_MISFIRE_SECONDS
    (every worker was down, or Redis was): `skip` them, `fire_once` (one job now for all of
    them, then continue) or `catch_up` (one job per missed fire, the latest `catch_up_max` of
    those at most `grace` seconds old). `payload` is the payload of every job it publishes.
    `name` tells several schedules of one job type apart; left out, it derives from the rest.
    """

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    misfire: Misfire = "fire_once"
    catch_up_max: int = 10
    grace: int = 3600
    payload: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ScheduleInvalid("give a schedule either cron or every, not both or neither")
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise ScheduleInvalid(f"every={self.every!r}: expected whole seconds >= 1")
        if self.every is not None and self.every > constants.SCHEDULE_EVERY_MAX:
            limit = constants.SCHEDULE_EVERY_MAX
            raise ScheduleInvalid(f"every={self.every}: expected at most {limit} seconds")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleInvalid(f"timezone {self.timezone!r}: not an IANA time zone") from None
        if self.cron is not None:
            if len(self.cron.split()) != 5:  # cronsim also reads a sixth field, of seconds
                raise ScheduleInvalid(f"cron {self.cron!r}: expected five fields")
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as exc:
                raise ScheduleInvalid(f"cron {self.cron!r}: {exc}") from None
        if self.misfire not in MISFIRE_POLICIES:
            raise ScheduleInvalid(f"misfire {self.misfire!r}: expected one of {MISFIRE_POLICIES}")
        if not 1 <= self.catch_up_max <= constants.SCHEDULE_CATCH_UP_MAX:
            limit = constants.SCHEDULE_CATCH_UP_MAX
            raise ScheduleInvalid(f"catch_up_max={self.catch_up_max}: expected 1-{limit}")
        if not 0 <= self.grace <= constants.SCHEDULE_GRACE_MAX:
            limit = constants.SCHEDULE_GRACE_MAX
            raise ScheduleInvalid(f"grace={self.grace}: expected 0-{limit} seconds")
        try:
            orjson.dumps(self.payload)
        except orjson.JSONEncodeError as exc:
            raise ScheduleInvalid(f"payload: not JSON ({exc})") from None
        if self.name is not None and not NAME.fullmatch(self.name):
            raise ScheduleInvalid(f"name {self.name!r} must match {NAME.pattern}")

    def when(self) -> dict[str, Any]:
        """Its timing and policy, as stored and shown (the payload apart)."""
        return {field: getattr(self, field) for field in _TIMING}

    def key(self) -> str:
        """Its name, else a digest of what it is: the same declaration gets the same key in
        every container, so they all share one schedule."""
        if self.name is not None:
            return self.name
        text = orjson.dumps([self.when(), self.payload], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(text).hexdigest()[:12]


def schedule_id(job_type: str, schedule: Schedule) -> str:
    """A schedule's id: `<job type>/<its key>`."""
    return f"{job_type}/{schedule.key()}"


def fire_job_id(schedule: str, fire_time: int) -> str:
    """The id of the job a schedule publishes for one fire time: the same for every container
    and every replay, so publishing it twice is a no-op. Within RQ's id alphabet."""
    digest = hashlib.sha256(schedule.encode()).hexdigest()[:16]
    return f"sched-{digest}-{fire_time}"


def _cron_after(schedule: Schedule, moment: float) -> Iterator[int]:
    """The cron fire times strictly after `moment`, as epoch seconds, in order.

    cronsim, started inside an hour the clocks repeat, may first answer an instant before its
    start (the hour's first pass): such answers are dropped, so an ambiguous time fires once.
    """
    assert schedule.cron is not None
    zone = ZoneInfo(schedule.timezone)
    start = datetime.fromtimestamp(math.floor(moment), UTC).astimezone(zone)
    for local in CronSim(schedule.cron, start):
        instant = int(local.timestamp())
        if instant > moment:
            yield instant


def fire_times(schedule: Schedule, after: float) -> Iterator[int]:
    """Every fire time strictly after `after` (epoch seconds), in order, for ever."""
    if schedule.every is not None:
        step = schedule.every
        moment = (math.floor(after) // step + 1) * step
        while True:
            yield moment
            moment += step
    else:
        yield from _cron_after(schedule, after)


def next_fire(schedule: Schedule, after: float) -> int:
    """The first fire time strictly after `after`."""
    return next(fire_times(schedule, after))


def preview(schedule: Schedule, after: float, count: int) -> list[int]:
    """The next `count` fire times after `after`."""
    times = fire_times(schedule, after)
    return [next(times) for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a schedule that fell due: the fire times to publish a job for (oldest
    first), and the schedule's next fire time (after `now`)."""

    fire: tuple[int, ...]
    next: int
    missed: int  # fire times that were due and get no job (the misfire policy dropped them)


def plan(schedule: Schedule, due: int, now: float) -> Plan:
    """The fires of a schedule whose next fire time `due` has come (`due` <= `now`).

    On time (the oldest due fire is at most SCHEDULE_MISFIRE_SECONDS late, as Quartz's
    misfire threshold): every due fire time gets its job, so a short stall of every worker
    loses nothing. Later than that, the schedule misfired, and its policy decides.
    """
    following = next_fire(schedule, now)
    if now - due <= constants.SCHEDULE_MISFIRE_SECONDS:
        fire = [due]
        for moment in fire_times(schedule, due):
            if moment > now:
                break
            fire.append(moment)
        return Plan(tuple(fire), following, 0)
    due_count = _count_between(schedule, due, now)
    if schedule.misfire == "skip":
        return Plan((), following, due_count)
    if schedule.misfire == "fire_once":
        return Plan((due,), following, due_count - 1)
    recent: list[int] = []
    for moment in fire_times(schedule, max(due - 1, math.floor(now) - schedule.grace - 1)):
        if moment > now:
            break
        recent.append(moment)
    kept = tuple(recent[-schedule.catch_up_max :])
    return Plan(kept, following, due_count - len(kept))


def _count_between(schedule: Schedule, due: int, now: float) -> int:
    """How many fire times lie in [due, now], counted up to SCHEDULE_COUNT_MAX (after a long
    outage an every-minute cron schedule has missed tens of thousands)."""
    if schedule.every is not None:
        return int((math.floor(now) - due) // schedule.every) + 1
    count = 1
    for moment in fire_times(schedule, due):
        if moment > now or count >= constants.SCHEDULE_COUNT_MAX:
            break
        count += 1
    return count
