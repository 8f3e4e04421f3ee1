"""The schedules' figures on /metrics, read with the backlog (service/telemetry/gauges.py).

One ZRANGE of the schedules in the backlog's first round trip and one HMGET per schedule in
its second: how many schedules are active and paused, and per schedule the jobs its fires
published, the fire times its misfire policy dropped, and how late its latest fire was
published (its job's enqueue time minus its fire time: about the containers' tick, one
second, when all is well; minutes after an outage of every worker or of Redis).

The counts come from the schedules' own hashes, so every container and API process exports
the same values: aggregate with `max by (schedule)`, never `sum`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from service.config import constants
from service.jobs import records

# Of a schedule's hash, in this order; every schedule has `next` (kept while paused).
_FIELDS = ("next", "pause", "fired", "missed", "lateness")


@dataclass(frozen=True, slots=True)
class ScheduleFigures:
    paused: bool
    fired: int  # jobs its fires published, ever
    missed: int  # fire times its misfire policy dropped, ever
    lateness: float | None  # seconds its latest fire was published late; None before a fire


def first(pipe: Any) -> None:
    """The schedule ids (the first round trip's last reply)."""
    pipe.zrange(constants.SCHEDULES_KEY, 0, -1)


def second(pipe: Any, ids: Sequence[Any]) -> None:
    """Each schedule's state (the second round trip's last replies, one per id)."""
    for member in ids:
        pipe.hmget(constants.schedule_key(records.as_text(member)), list(_FIELDS))


def decode(ids: Sequence[Any], rows: Iterable[Sequence[Any]]) -> dict[str, ScheduleFigures]:
    """The figures of each schedule still there (one deleted between the two rounds is left
    out: its hash is gone)."""
    figures: dict[str, ScheduleFigures] = {}
    for member, (following, pause, fired, missed, lateness) in zip(ids, rows, strict=True):
        if following is None:
            continue
        figures[records.as_text(member)] = ScheduleFigures(
            pause is not None,
            int(fired or 0),
            int(missed or 0),
            None if lateness in (None, b"") else float(lateness),
        )
    return figures


def families(schedules: dict[str, ScheduleFigures]) -> Iterator[Metric]:
    states = GaugeMetricFamily(
        "service_schedules",
        "Schedules in Redis, by state (active: firing; paused: firing nothing until resumed)",
        labels=["state"],
    )
    paused = sum(1 for one in schedules.values() if one.paused)
    states.add_metric(["active"], len(schedules) - paused)
    states.add_metric(["paused"], paused)
    yield states
    fires = CounterMetricFamily(
        "service_schedule_fires",
        "Jobs a schedule's fires published (one per fire time)",
        labels=["schedule"],
    )
    missed = CounterMetricFamily(
        "service_schedule_missed",
        "Fire times of a schedule its misfire policy dropped (no job published)",
        labels=["schedule"],
    )
    lateness = GaugeMetricFamily(
        "service_schedule_last_fire_lateness_seconds",
        "How late a schedule's latest fire was published (its job enqueued minus its fire time)",
        labels=["schedule"],
    )
    for schedule, one in sorted(schedules.items()):
        fires.add_metric([schedule], one.fired)
        missed.add_metric([schedule], one.missed)
        if one.lateness is not None:
            lateness.add_metric([schedule], one.lateness)
    yield fires
    yield missed
    yield lateness
