"""The scheduler thread: the schedules of the job types in code, declared with their jobs'
policies, then fired about once a second until told to stop."""

from __future__ import annotations

import threading
import time

import redis
from pydantic import BaseModel

from service.config import constants
from service.config.settings import load
from service.jobs import records
from service.jobs.context import JobContext
from service.jobs.policy import Backoff
from service.jobs.registry import Registry
from service.jobs.schedule import Schedule
from service.store.publish import publish_now
from service.store.schedules import Definition, Schedules
from service.worker.scheduler import Scheduler, definitions
from tests.conftest import wait_for


class Report(BaseModel):
    n: int = 0


def job(queue: str) -> records.NewJob:
    return records.NewJob(records.new_id(), "plain", queue, {}, 60, 0)


def registry() -> Registry:
    types = Registry()

    @types.job(
        "report",
        queue="reports",
        priority="high",
        timeout=30,
        max_retries=2,
        backoff=Backoff(type="fixed", base=5, jitter=False),
        schedule=["0 9 * * MON", Schedule(every=1, name="often", payload={"n": 1})],
    )
    def report(payload: Report, ctx: JobContext) -> None: ...

    @types.job("plain")
    def plain(payload: object, ctx: JobContext) -> None: ...

    return types


def test_each_declared_schedule_carries_its_job_type_s_policies() -> None:
    settings = load({"QUEUE_NAME": "app-queue"})
    found = definitions(settings, registry())
    assert [d.id for d in found][1] == "report/often"
    assert {(d.type, d.queue, d.timeout, d.max_retries) for d in found} == {
        ("report", "reports.high", 30, 2)
    }
    assert found[0].backoff == '{"type":"fixed","base":5.0,"cap":300.0,"jitter":false}'


def test_the_scheduler_declares_then_fires_until_stopped(
    redis_url: str, queue_redis: redis.Redis
) -> None:
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1"})
    # a schedule of a type this code knows but no longer declares, and one of another type
    Schedules(queue_redis).declare(
        [
            Definition("report/gone", "report", "q", 1, 0, "", 1, 1, Schedule(every=60)),
            Definition("elsewhere/x", "elsewhere", "q", 1, 0, "", 1, 1, Schedule(every=60)),
        ],
        time.time(),
    )
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(settings, registry()).run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: queue_redis.llen(constants.queue_key("reports.high")) >= 2, timeout=10)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    ids = {m.decode() for m in queue_redis.zrange(constants.SCHEDULES_KEY, 0, -1)}
    assert ids == {"report/often", "elsewhere/x", definitions(settings, registry())[0].id}


def test_a_fire_is_published_past_max_backlog(redis_url: str, queue_redis: redis.Redis) -> None:
    # Given MAX_BACKLOG=2 and the schedule's queue already holding 5 waiting jobs
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "MAX_BACKLOG": "2"})
    publish_now(queue_redis, [job("reports.high") for _ in range(5)])
    # When the scheduler fires the every-second schedule
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(settings, registry()).run, args=(stop,))
    thread.start()
    try:
        # Then its job is queued all the same (the API would have answered 429)
        wait_for(lambda: queue_redis.llen(constants.queue_key("reports.high")) >= 6, timeout=10)
    finally:
        stop.set()
        thread.join(10)
    waiting = queue_redis.lrange(constants.queue_key("reports.high"), 0, -1)
    assert any(member.startswith(b"sched-") for member in waiting)
