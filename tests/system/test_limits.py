"""Limits end to end: an API and two worker containers over one Redis. A concurrency limit per
tenant is never exceeded and one tenant's backlog does not hold up another; a rate limit holds
across both containers; an unlimited type on the same queue runs meanwhile; no held job spends
an attempt; a SIGKILLed container's leases come back and no job is lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import datetime

import pytest
import redis

from service.config import constants
from tests.conftest import ServiceProcess, http, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]

HANDLERS = "service.dev.demo,tests.limit_handlers"
WORKER = {
    "HANDLER_MODULES": HANDLERS,
    "WORKER_CONCURRENCY": "8",
    "WORKER_PROCESSES": "2",
    "WORKER_PROCESSING_INTERVAL": "1000",
}


def submit(api: ServiceProcess, job_type: str, count: int, **payload: object) -> list[str]:
    batch = {"jobs": [{"type": job_type, "payload": payload}] * count}
    status, _, body = http("POST", f"{api.url}/jobs/batch", batch)
    assert status == 202, body
    return [job["id"] for job in body["jobs"]]


def fields(queue_redis: redis.Redis, ids: list[str], *names: str) -> list[list[str]]:
    rows = [queue_redis.hmget(constants.job_key(i), *names) for i in ids]
    return [[(value or b"").decode() for value in row] for row in rows]


def starts(app_redis: redis.Redis, name: str) -> list[float]:
    return sorted(float(s.split()[0]) for s in app_redis.lrange(f"starts:{name}", 0, -1))


def all_finished(queue_redis: redis.Redis, ids: list[str]) -> bool:
    return all(row[0] == "finished" for row in fields(queue_redis, ids, "status"))


@pytest.mark.timeout(110)
def test_limits_hold_across_two_containers_without_spending_attempts(
    redis_url: str, queue_redis: redis.Redis, start_service: Start
) -> None:
    app_redis = redis.Redis.from_url(f"{redis_url}/0")
    # Given limited and unlimited jobs on one queue: tenant a's backlog first, then tenant b's,
    # a rate-limited type (5/second) and an unlimited one
    api = start_service(HANDLER_MODULES=HANDLERS)
    tenant_a = submit(api, "limits.two", 16, tenant="a", seconds=0.3)
    tenant_b = submit(api, "limits.two", 4, tenant="b", seconds=0.3)
    rated = submit(api, "limits.rated", 15, seconds=0.0)
    free = submit(api, "limits.free", 30, seconds=0.05)
    # When two worker containers run them
    for _ in range(2):
        start_service(worker=True, **WORKER)
    everything = tenant_a + tenant_b + rated + free
    wait_for(lambda: all_finished(queue_redis, everything), timeout=60)
    # Then no tenant ever had more than 2 running, and b was not held up behind a's backlog
    assert int(app_redis.get("max:two:a") or 0) == 2
    assert int(app_redis.get("max:two:b") or 0) <= 2
    assert max(starts(app_redis, "two:b")) < starts(app_redis, "two:a")[8]
    # and the unlimited type ran meanwhile: all of it done before tenant a was half through
    assert max(starts(app_redis, "free:")) < starts(app_redis, "two:a")[8]
    # and no window of one second held more than 5 starts of the rated type (the claim's
    # start instants, which the limit governs), over the 3 s its 15 jobs need at least
    begun = sorted(
        datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp()
        for row in fields(queue_redis, rated, "started_at")
    )
    assert all(begun[i + 5] - begun[i] >= 1.0 - 1e-3 for i in range(len(begun) - 5))
    # and every job ran once: a job held back never spent an attempt
    assert {row[0] for row in fields(queue_redis, everything, "attempts")} == {"1"}


@pytest.mark.timeout(110)
def test_a_sigkilled_containers_leases_come_back_and_no_job_is_lost(
    redis_url: str, queue_redis: redis.Redis, start_service: Start
) -> None:
    app_redis = redis.Redis.from_url(f"{redis_url}/0")
    api = start_service(HANDLER_MODULES=HANDLERS)
    jobs = submit(api, "limits.two", 12, tenant="a", seconds=1.0)
    first = start_service(worker=True, **WORKER)
    # Given the first container holding both slots
    leases = constants.limit_key("limit_leases_key", "limits.two", "a")
    wait_for(lambda: queue_redis.zcard(leases) == 2 and int(app_redis.get("running:two:a") or 0))
    start_service(worker=True, **WORKER)
    # When it is SIGKILLed with its jobs running
    os.killpg(first.process.pid, signal.SIGKILL)
    killed_at = time.time()
    # (its two runs died with it: no longer counted; no other can start before they are
    # recovered, their leases holding both slots)
    assert queue_redis.zcard(leases) == 2
    app_redis.mset({"running:two:a": 0, "max:two:a": 0})
    # Then its jobs are recovered, their leases freed, and every job finishes, never more than
    # 2 running at once
    wait_for(lambda: all_finished(queue_redis, jobs), timeout=80)
    assert int(app_redis.get("max:two:a") or 0) == 2
    assert max(starts(app_redis, "two:a")) > killed_at
    assert queue_redis.zcard(leases) == 0
