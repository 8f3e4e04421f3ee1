"""The schedules' figures on /metrics, read with the backlog from real Redis: schedules by
state, and per schedule its published fires, its dropped fires and its latest lateness; and a
paused queue the process does not serve, shown as paused."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.config import constants
from service.jobs.schedule import Schedule
from service.store.schedules import Definition, Schedules
from service.telemetry import gauges

T = 1_800_000_000  # a whole minute, in epoch seconds


def definition(schedule: Schedule) -> Definition:
    return Definition(f"noop/{schedule.key()}", "noop", "app-queue", 180, 0, "", 60, 60, schedule)


def samples(client: redis.Redis) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    collector = gauges.BacklogCollector()
    collector.latest = gauges.read_backlog(client, gauges.BacklogPlan({"app-queue"}))
    registry = CollectorRegistry()
    registry.register(collector)
    text = gauges.exposition(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_schedules_show_by_state_with_their_fires_misses_and_lateness(
    queue_redis: redis.Redis,
) -> None:
    # Given an on-time schedule fired once, a misfired one (fire_once) and a paused one
    schedules = Schedules(queue_redis)
    on_time = definition(Schedule(every=60, name="on-time"))
    misfired = definition(Schedule(every=60, name="misfired"))
    paused = definition(Schedule(every=3600, name="paused"))
    schedules.declare([on_time, misfired, paused], T + 10)
    schedules.fire(on_time, T + 60, T + 60.25)
    schedules.fire(misfired, T + 60, T + 665)
    queue_redis.hset(constants.schedule_key(paused.id), "pause", T + 3600)
    queue_redis.zadd(constants.SCHEDULES_KEY, {paused.id: "+inf"})
    # When the metrics are read
    found = samples(queue_redis)

    # Then each shows, by schedule id
    def of(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert of("service_schedules", state="active") == 2
    assert of("service_schedules", state="paused") == 1
    assert of("service_schedule_fires_total", schedule="noop/on-time") == 1
    assert of("service_schedule_fires_total", schedule="noop/misfired") == 1
    assert of("service_schedule_missed_total", schedule="noop/misfired") == 10
    assert of("service_schedule_missed_total", schedule="noop/paused") == 0
    assert of("service_schedule_last_fire_lateness_seconds", schedule="noop/on-time") == 0.25
    assert of("service_schedule_last_fire_lateness_seconds", schedule="noop/misfired") == 605
    never = (
        "service_schedule_last_fire_lateness_seconds",
        frozenset({("schedule", "noop/paused")}),
    )
    assert never not in found  # no fire yet: no lateness


def test_a_schedule_the_code_declared_shows_before_its_first_fire(
    queue_redis: redis.Redis,
) -> None:
    Schedules(queue_redis).declare([definition(Schedule(every=60, name="fresh"))], T + 10)
    found = samples(queue_redis)
    assert found[("service_schedules", frozenset({("state", "active")}))] == 1
    assert found[("service_schedule_fires_total", frozenset({("schedule", "noop/fresh")}))] == 0


def test_a_paused_queue_no_one_here_serves_shows_as_paused(queue_redis: redis.Redis) -> None:
    queue_redis.sadd(constants.PAUSED_KEY, "elsewhere", "elsewhere.high", "elsewhere.low")
    found = samples(queue_redis)
    assert found[("service_queue_paused", frozenset({("queue", "elsewhere")}))] == 1
    assert found[("service_queue_paused", frozenset({("queue", "app-queue")}))] == 0
    # only the pause: its other figures are those of the queues this process serves
    assert ("service_queue_workers", frozenset({("queue", "elsewhere")})) not in found
