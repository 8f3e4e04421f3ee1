"""Schedules: their checks, their fire times (daylight-saving changes included) and the
misfire policies."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from service.config import constants
from service.jobs.context import JobContext
from service.jobs.registry import Registry
from service.jobs.schedule import (
    Plan,
    Schedule,
    ScheduleInvalid,
    fire_job_id,
    next_fire,
    plan,
    preview,
    schedule_id,
)


class Tone(BaseModel):
    tone: str


def at(zone: str, *fields: int, fold: int = 0) -> int:
    """Epoch seconds of a local wall-clock time."""
    return int(datetime(*fields, tzinfo=ZoneInfo(zone), fold=fold).timestamp())  # type: ignore[misc]


def utc(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=UTC).timestamp())  # type: ignore[misc]


def day_fires(cron: str, zone: str, day: tuple[int, int, int]) -> list[str]:
    """Every fire time of `cron` during one local day, as local ISO times with their offsets."""
    start, end = at(zone, *day, 0, 0) - 1, at(zone, *day, 23, 59)
    fires = [t for t in preview(Schedule(cron=cron, timezone=zone), start, 30) if t <= end]
    return [datetime.fromtimestamp(t, ZoneInfo(zone)).isoformat() for t in fires]


# --- Daylight-saving changes: a 02:30 daily job, and 01:30 where that hour is the one changed


@pytest.mark.parametrize(
    ("zone", "day", "cron", "fires"),
    [
        # Lisbon springs forward at 01:00 WET to 02:00 WEST: 02:30 exists and fires as usual,
        ("Europe/Lisbon", (2026, 3, 29), "30 2 * * *", ["2026-03-29T02:30:00+01:00"]),
        # and 01:30, which does not exist, fires at the next valid instant, 02:00 WEST.
        ("Europe/Lisbon", (2026, 3, 29), "30 1 * * *", ["2026-03-29T02:00:00+01:00"]),
        # Lisbon falls back at 02:00 WEST to 01:00 WET: 02:30 happens once,
        ("Europe/Lisbon", (2026, 10, 25), "30 2 * * *", ["2026-10-25T02:30:00+00:00"]),
        # and 01:30, which happens twice, fires once, at its first occurrence.
        ("Europe/Lisbon", (2026, 10, 25), "30 1 * * *", ["2026-10-25T01:30:00+01:00"]),
        # New York springs forward at 02:00 EST to 03:00 EDT: 02:30 does not exist, and
        # fires at 03:00 EDT.
        ("America/New_York", (2026, 3, 8), "30 2 * * *", ["2026-03-08T03:00:00-04:00"]),
        # New York falls back at 02:00 EDT to 01:00 EST: 02:30 happens once,
        ("America/New_York", (2026, 11, 1), "30 2 * * *", ["2026-11-01T02:30:00-05:00"]),
        # and 01:30 twice: it fires once, the first time.
        ("America/New_York", (2026, 11, 1), "30 1 * * *", ["2026-11-01T01:30:00-04:00"]),
    ],
)
def test_a_daily_job_fires_once_on_the_days_the_clocks_change(
    zone: str, day: tuple[int, int, int], cron: str, fires: list[str]
) -> None:
    assert day_fires(cron, zone, day) == fires


def test_an_ambiguous_time_fires_once_even_when_counted_from_inside_the_repeated_hour() -> None:
    daily = Schedule(cron="30 1 * * *", timezone="America/New_York")
    first = at("America/New_York", 2026, 11, 1, 1, 30)
    inside_second_pass = at("America/New_York", 2026, 11, 1, 1, 10, fold=1)
    assert inside_second_pass > first
    following = at("America/New_York", 2026, 11, 2, 1, 30)
    assert next_fire(daily, first) == following
    assert next_fire(daily, inside_second_pass) == following


def test_a_step_in_the_hour_keeps_its_pace_in_elapsed_time_across_the_fall_back() -> None:
    half_hourly = Schedule(cron="*/30 * * * *", timezone="America/New_York")
    start = at("America/New_York", 2026, 11, 1, 0, 59)
    times = preview(half_hourly, start, 6)
    assert [b - a for a, b in itertools.pairwise(times)] == [1800] * 5


# --- Fire times -----------------------------------------------------------------------------


def test_an_interval_counts_from_the_epoch_so_every_container_agrees() -> None:
    minutely = Schedule(every=60)
    assert preview(minutely, utc(2026, 1, 1, 9, 0, 10), 3) == [
        utc(2026, 1, 1, 9, 1),
        utc(2026, 1, 1, 9, 2),
        utc(2026, 1, 1, 9, 3),
    ]
    assert next_fire(minutely, utc(2026, 1, 1, 9, 1)) == utc(2026, 1, 1, 9, 2)  # strictly after


def test_a_cron_expression_is_read_in_its_time_zone() -> None:
    mondays = Schedule(cron="0 9 * * MON", timezone="Europe/Lisbon")
    assert preview(mondays, utc(2026, 7, 1), 2) == [
        utc(2026, 7, 6, 8, 0),  # 09:00 WEST
        utc(2026, 7, 13, 8, 0),
    ]


def test_fire_job_ids_are_stable_and_within_rq_s_id_alphabet() -> None:
    job_id = fire_job_id("report/daily", 1_790_000_000)
    assert job_id == fire_job_id("report/daily", 1_790_000_000)
    assert job_id != fire_job_id("report/daily", 1_790_000_060)
    assert job_id != fire_job_id("report/weekly", 1_790_000_000)
    assert job_id.replace("-", "").isalnum()


# --- Checks and declarations ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"cron": "* * * * *", "every": 5},
        {"cron": "61 * * * *"},
        {"cron": "* * * *"},
        {"cron": "0 * * * * *"},  # six fields: cronsim would read seconds; cron has five
        {"every": 0},
        {"every": 1.5},
        {"every": constants.SCHEDULE_EVERY_MAX + 1},
        {"every": 60, "timezone": "Mars/Olympus"},
        {"every": 60, "misfire": "sometimes"},
        {"every": 60, "catch_up_max": 0},
        {"every": 60, "grace": constants.SCHEDULE_GRACE_MAX + 1},
        {"every": 60, "name": "has space"},
        {"every": 60, "payload": {"x": object()}},
    ],
)
def test_a_schedule_that_cannot_run_is_refused_when_declared(fields: dict[str, object]) -> None:
    with pytest.raises(ScheduleInvalid):
        Schedule(**fields)  # type: ignore[arg-type]


def test_job_declares_several_schedules_of_one_type() -> None:
    registry = Registry()

    @registry.job(
        "report",
        schedule=["0 9 * * MON", Schedule(cron="0 18 * * FRI", name="friday")],
        timezone="Europe/Lisbon",
        every=3600,
    )
    def report(payload: object, ctx: JobContext) -> None: ...

    schedules = registry.get("report").schedules
    assert [(s.cron, s.every, s.timezone) for s in schedules] == [
        ("0 9 * * MON", None, "Europe/Lisbon"),
        ("0 18 * * FRI", None, "UTC"),
        (None, 3600, "UTC"),
    ]
    assert schedule_id("report", schedules[1]) == "report/friday"
    assert schedule_id("report", schedules[0]) == schedule_id(
        "report", Schedule(cron="0 9 * * MON", timezone="Europe/Lisbon")
    )


def test_job_refuses_a_schedule_whose_payload_its_type_would_refuse() -> None:
    registry = Registry()
    registry.job("ok", schedule=Schedule(every=60, payload={"tone": "firm"}))(remind)
    with pytest.raises(ValueError, match="payload tone: Field required"):
        registry.job("bad", schedule=Schedule(every=60, payload={}))(remind)
    with pytest.raises(ValueError, match="payload x: Extra inputs are not permitted"):
        registry.job("empty", schedule=Schedule(every=60, payload={"x": 1}))(noop)


def remind(payload: Tone, ctx: JobContext) -> None: ...


def noop(payload: object, ctx: JobContext) -> None: ...


def test_job_refuses_two_schedules_of_the_same_name() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="share a name"):
        registry.job("report", schedule=["0 9 * * *", "0 9 * * *"])


# --- Misfires ---------------------------------------------------------------------------------

EVERY_MINUTE = Schedule(every=60)
T = utc(2026, 1, 1, 12, 0)


def test_a_fire_on_time_is_published_with_any_other_due_within_the_threshold() -> None:
    assert plan(EVERY_MINUTE, T, T + 1) == Plan((T,), T + 60, 0)
    late = T + constants.SCHEDULE_MISFIRE_SECONDS  # two fires due, the first just on time
    assert plan(EVERY_MINUTE, T, late) == Plan((T, T + 60), T + 120, 0)


def test_skip_drops_every_missed_fire_and_continues() -> None:
    skip = Schedule(every=60, misfire="skip")
    assert plan(skip, T, T + 600 + 5) == Plan((), T + 660, 11)


def test_fire_once_publishes_one_job_for_all_missed_fires() -> None:
    assert plan(EVERY_MINUTE, T, T + 600 + 5) == Plan((T,), T + 660, 10)


def test_catch_up_publishes_each_missed_fire_within_grace_and_count() -> None:
    catch_up = Schedule(every=60, misfire="catch_up", catch_up_max=3, grace=3600)
    assert plan(catch_up, T, T + 600 + 5) == Plan((T + 480, T + 540, T + 600), T + 660, 8)
    within_grace = Schedule(every=60, misfire="catch_up", catch_up_max=100, grace=150)
    assert plan(within_grace, T, T + 600 + 5) == Plan((T + 480, T + 540, T + 600), T + 660, 8)


def test_a_cron_schedule_misfires_as_an_interval_does() -> None:
    hourly = Schedule(cron="0 * * * *", misfire="catch_up", catch_up_max=2, grace=3 * 3600)
    now = T + 5 * 3600 + 300  # six fires due; three within grace; the latest two kept
    assert plan(hourly, T, now) == Plan((T + 4 * 3600, T + 5 * 3600), T + 6 * 3600, 4)
    assert plan(Schedule(cron="0 * * * *"), T, now) == Plan((T,), T + 6 * 3600, 5)
