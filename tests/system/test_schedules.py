"""Schedules over real worker containers: every container ticks, and each fire time of an
every-second schedule publishes exactly one job, also while a container is killed and
replaced, and while Redis crashes and restarts from its append-only file."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from service.config import constants
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs.schedule import fire_job_id
from tests.conftest import ServiceProcess, wait_for

pytestmark = pytest.mark.slow
HANDLERS = "tests.schedule_handlers"  # the job type `tick`, every second


def start_workers(start: Callable[..., ServiceProcess], count: int) -> list[ServiceProcess]:
    workers = [start(worker=True, wait=False, HANDLER_MODULES=HANDLERS) for _ in range(count)]
    for worker in workers:
        worker.wait_healthy()
    return workers


def tick_schedule(queue_redis: redis.Redis) -> str | None:
    """The id of `tick`'s schedule, once a container has declared it."""
    members = queue_redis.zrange(constants.SCHEDULES_KEY, 0, -1)
    return next((m.decode() for m in members if m.startswith(b"tick/")), None)


def fire_times(queue_redis: redis.Redis, schedule_id: str) -> list[int]:
    """The fire times the schedule published a job for, in order."""
    prefix = constants.job_key(fire_job_id(schedule_id, 0).removesuffix("0"))
    keys = queue_redis.scan_iter(prefix + "*", count=1000)
    return sorted(int(key.decode().removeprefix(prefix)) for key in keys)


def test_three_containers_publish_one_job_per_fire_time(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    # Given three worker containers, each ticking over the same every-second schedule
    workers = start_workers(start_service, 3)
    schedule_id = wait_for(lambda: tick_schedule(queue_redis))
    # When they run together for a few seconds
    time.sleep(4)
    for worker in workers:
        worker.stop()
    # Then every fire time from the first to the last has exactly one job, and they ran
    fires = fire_times(queue_redis, schedule_id)
    assert len(fires) >= 3
    assert fires == list(range(fires[0], fires[0] + len(fires)))  # no gap, none twice
    state = queue_redis.hgetall(constants.schedule_key(schedule_id))
    assert int(state[b"fired"]) == len(fires)  # no fire time published a second job
    statuses = {
        queue_redis.hget(constants.job_key(fire_job_id(schedule_id, fire)), "status")
        for fire in fires
    }
    assert b"finished" in statuses


def test_a_container_killed_and_replaced_neither_skips_nor_repeats_a_fire(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    # Given three worker containers ticking over the same every-second schedule
    workers = start_workers(start_service, 3)
    schedule_id = wait_for(lambda: tick_schedule(queue_redis))
    time.sleep(2)
    # When one is SIGKILLed (its whole process group), and a new one starts in its place
    os.killpg(workers[0].process.pid, signal.SIGKILL)
    workers[0].process.wait(10)
    workers += start_workers(start_service, 1)
    time.sleep(2)
    for worker in workers:
        worker.stop()
    # Then the fire times still run on without a gap, each with one job
    fires = fire_times(queue_redis, schedule_id)
    assert len(fires) >= 4
    assert fires == list(range(fires[0], fires[0] + len(fires)))
    state = queue_redis.hgetall(constants.schedule_key(schedule_id))
    assert int(state[b"fired"]) == len(fires)


@pytest.mark.timeout(90)
def test_no_fire_twice_or_lost_across_a_container_kill_and_a_redis_crash(
    start_service: Callable[..., ServiceProcess], redis_url: str
) -> None:
    # Given two worker containers ticking over an every-second schedule, their queue on a
    # Redis of this test's own with an append-only file fsynced every second
    server = EmbeddedRedis(appendonly=True, extra_args=("--appendfsync", "everysec")).start()
    own = redis.Redis(port=server.port, db=1)
    env = {"HANDLER_MODULES": HANDLERS, "QUEUE_REDIS_URL": f"{server.url}/1"}
    try:
        workers = [start_service(worker=True, wait=False, **env) for _ in range(2)]
        for worker in workers:
            worker.wait_healthy()
        schedule_id = wait_for(lambda: tick_schedule(own))
        wait_for(lambda: len(fire_times(own, schedule_id)) >= 2)
        # When one container is SIGKILLed and replaced
        os.killpg(workers[0].process.pid, signal.SIGKILL)
        workers[0].process.wait(10)
        start_service(worker=True, wait=False, **env)
        time.sleep(2)
        # and Redis crashes (SIGKILL: up to a second of writes lost) and restarts from its AOF
        server.kill()
        time.sleep(1.5)
        server.start()
        restarted = time.time()
        # Then fires go on after the restart
        wait_for(lambda: max(fire_times(own, schedule_id)) >= restarted + 3, timeout=20)
        for worker in workers:
            worker.stop()
        fires = fire_times(own, schedule_id)
        # and every fire time from the first to the last has one job: none lost in the outage
        # (it was within the misfire threshold, so every due fire is published), none twice
        assert fires == list(range(fires[0], fires[-1] + 1))
        assert fires[0] < restarted - 3
        state = own.hgetall(constants.schedule_key(schedule_id))
        assert int(state[b"fired"]) == len(fires)
        assert int(state.get(b"missed", 0)) == 0
    finally:
        own.close()
        server.stop()
