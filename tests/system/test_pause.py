"""Pausing a queue, end to end: an API and worker processes over one Redis, the queue busy
with short jobs. No job of the paused queue starts later than a second after the pause
answers, also across a worker's restart; resuming restores the rate."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from service.config import constants
from tests.conftest import ServiceProcess, http, wait_for
from tests.system.test_metrics import scrape_until
from tests.timed_handlers import STARTS

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]

HANDLERS = "service.dev.demo,tests.timed_handlers"
WORKER = {"HANDLER_MODULES": HANDLERS, "WORKER_CONCURRENCY": "8", "WORKER_PROCESSES": "2"}


def starts(app_redis: redis.Redis) -> list[float]:
    return [score for _, score in app_redis.zrange(STARTS, 0, -1, withscores=True)]


def rate(app_redis: redis.Redis, seconds: float) -> float:
    """Jobs started per second over the next `seconds`."""
    before = app_redis.zcard(STARTS)
    time.sleep(seconds)
    return (app_redis.zcard(STARTS) - before) / seconds


# (seconds each job takes, jobs published: far more than the test runs): jobs shorter than
# BATCH_TARGET_SECONDS are claimed ahead, in batches, the others as slots free up.
@pytest.mark.parametrize(
    ("nap", "jobs"), [(0.0, 30_000), (0.02, 4000)], ids=["claimed-ahead", "one-by-one"]
)
@pytest.mark.timeout(90)
def test_no_job_of_a_paused_queue_starts_after_a_second_and_resume_restores_the_rate(
    redis_url: str, queue_redis: redis.Redis, start_service: Start, nap: float, jobs: int
) -> None:
    app_redis = redis.Redis.from_url(f"{redis_url}/0")
    # Given an API and a worker busy with a queue of short jobs
    api = start_service(HANDLER_MODULES=HANDLERS, WORKER_PROCESSING_INTERVAL="1000")
    job = {"type": "test.timed", "payload": {"seconds": nap}}
    batch = {"jobs": [job] * 1000}
    for _ in range(jobs // 1000):
        assert http("POST", f"{api.url}/jobs/batch", batch)[0] == 202
    worker = start_service(worker=True, **WORKER)
    wait_for(lambda: app_redis.zcard(STARTS) > 50)
    running_rate = rate(app_redis, 1.0)
    assert running_rate > 20

    # When the queue is paused
    status, _, body = http("POST", f"{api.url}/queues/app-queue/pause")
    paused_at = time.time()
    assert (status, body) == (200, {"queue": "app-queue", "paused": True})

    # Then no job starts later than a second after, and the rest wait
    time.sleep(2.0)
    assert max(starts(app_redis)) <= paused_at + 1.0
    waiting = queue_redis.llen(constants.queue_key("app-queue"))
    assert waiting > 0
    # and publishing goes on, and /queues and /metrics say it is paused
    assert http("POST", f"{api.url}/jobs", job)[0] == 202
    listing = http("GET", f"{api.url}/queues")[2]["queues"]
    assert all(q["paused"] for q in listing if q["name"].startswith("app-queue"))
    scrape_until(
        api.url,
        lambda samples: (
            samples.get(("service_queue_paused", frozenset({("queue", "app-queue")}))) == 1.0
        ),
    )

    # When the worker is restarted, still paused
    worker.stop()
    restarted_at = time.time()
    worker = start_service(worker=True, **WORKER)
    time.sleep(1.0)
    assert max(starts(app_redis)) <= paused_at + 1.0 < restarted_at
    assert queue_redis.llen(constants.queue_key("app-queue")) == waiting + 1

    # When it is resumed, jobs start again at about the rate they ran before (how soon after
    # the resume is a benchmark figure, benchmarks/schedules.py: a loaded machine is slow here)
    status, _, body = http("POST", f"{api.url}/queues/app-queue/resume")
    resumed_at = time.time()
    assert (status, body) == (200, {"queue": "app-queue", "paused": False})
    wait_for(lambda: max(starts(app_redis)) > resumed_at, timeout=10.0, interval=0.01)
    assert rate(app_redis, 1.0) >= running_rate / 2
    scrape_until(
        api.url,
        lambda samples: (
            samples.get(("service_queue_paused", frozenset({("queue", "app-queue")}))) == 0.0
        ),
    )
    app_redis.close()
