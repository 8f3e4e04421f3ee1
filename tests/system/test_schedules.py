"""Schedules over real worker containers: every container ticks, and each fire time of an
every-second schedule publishes exactly one job."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from service.config import constants
from service.jobs.schedule import fire_job_id
from tests.conftest import ServiceProcess, wait_for

pytestmark = pytest.mark.slow
SCHEDULE = "tick/"  # the prefix of tests/schedule_handlers.py's schedule id


def test_three_containers_publish_one_job_per_fire_time(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    # Given three worker containers, each ticking over the same every-second schedule
    workers = [
        start_service(worker=True, wait=False, HANDLER_MODULES="tests.schedule_handlers")
        for _ in range(3)
    ]
    for worker in workers:
        worker.wait_healthy()
    [schedule_id] = wait_for(
        lambda: [
            m.decode()
            for m in queue_redis.zrange(constants.SCHEDULES_KEY, 0, -1)
            if m.startswith(SCHEDULE.encode())
        ]
    )
    # When they run together for a few seconds
    time.sleep(4)
    for worker in workers:
        worker.stop()
    # Then every fire time from the first to the last has exactly one job, and it ran
    prefix = fire_job_id(schedule_id, 0).removesuffix("0")
    fires = sorted(
        int(key.decode().removeprefix(constants.job_key(prefix)))
        for key in queue_redis.scan_iter(constants.job_key(prefix) + "*")
    )
    assert len(fires) >= 3
    assert fires == list(range(fires[0], fires[0] + len(fires)))  # no gap, none twice
    state = queue_redis.hgetall(constants.schedule_key(schedule_id))
    assert int(state[b"fired"]) == len(fires)  # no fire time published a second job
    finished = [
        fire
        for fire in fires
        if queue_redis.hget(constants.job_key(fire_job_id(schedule_id, fire)), "status")
        == b"finished"
    ]
    assert finished
