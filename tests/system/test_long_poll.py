"""`GET /jobs/{id}?wait=` with real processes: 200 requests wait at once without a Redis
connection each, the API serves others meanwhile, each answers when its job ends, and a
graceful stop answers them all at once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx2
import pytest
import redis

from tests.conftest import ServiceProcess, http, wait_for

pytestmark = pytest.mark.slow

WAITERS = 200


def established(port: int) -> int:
    """Established TCP connections to `port` on this machine (IPv4), from /proc/net/tcp."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "01")


def submit_sleepers(url: str, count: int, seconds: float) -> list[str]:
    jobs = [{"type": "sleep", "payload": {"seconds": seconds}} for _ in range(count)]
    status, _, body = http("POST", f"{url}/jobs/batch", {"jobs": jobs})
    assert status == 202
    return [job["id"] for job in body["jobs"]]


async def wait_all(url: str, ids: list[str], wait: float) -> list[tuple[int, str, float]]:
    """Every id's GET ?wait=, at once: (status, job status, seconds it took)."""
    limits = httpx2.Limits(max_connections=WAITERS + 10)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=wait + 10) as client:

        async def one(job_id: str) -> tuple[int, str, float]:
            started = time.monotonic()
            response = await client.get(f"/jobs/{job_id}", params={"wait": wait})
            body = response.json()
            status = body.get("status") or body["error"]["code"]
            return response.status_code, status, time.monotonic() - started

        return await asyncio.gather(*(one(job_id) for job_id in ids))


def test_200_waits_share_a_connection_and_end_with_their_jobs(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    # Given an API and 200 jobs no worker runs yet
    api = start_service()
    ids = submit_sleepers(api.url, WAITERS, 0.2)

    async def scenario() -> list[tuple[int, str, float]]:
        # When 200 requests wait for them
        waits = asyncio.create_task(wait_all(api.url, ids, 25))
        deadline = time.monotonic() + 20
        while established(api.port) < WAITERS:
            assert time.monotonic() < deadline and not waits.done()
            await asyncio.sleep(0.05)
        # Then the API answers other requests meanwhile, with no Redis connection per wait
        health = await asyncio.to_thread(http, "GET", f"{api.url}/queues")
        assert health[0] == 200 and not waits.done()
        # (the pool keeps what the requests' first reads opened, as many as a busy machine
        # started at once; one connection blocks in XREAD for all the waits)
        while not (blocked := [c for c in queue_redis.client_list() if c["cmd"] == "xread"]):
            assert time.monotonic() < deadline and not waits.done()
            await asyncio.sleep(0.05)
        assert len(blocked) == 1, blocked
        # And when a worker runs the jobs, each wait answers with its job finished
        start_service(worker=True, WORKER_CONCURRENCY="50")
        return await waits

    answers = asyncio.run(scenario())
    assert {(status, job) for status, job, _ in answers} == {(200, "finished")}
    assert max(took for _, _, took in answers) < 25


def test_a_wait_ends_at_its_deadline_with_the_job_as_it_is(
    start_service: Callable[..., ServiceProcess],
) -> None:
    api = start_service()
    (job_id,) = submit_sleepers(api.url, 1, 0.1)
    started = time.monotonic()
    status, _, body = http("GET", f"{api.url}/jobs/{job_id}?wait=0.5")
    assert (status, body["status"]) == (200, "queued")
    assert time.monotonic() - started >= 0.5
    for bad in ("31", "-1", "nan", "inf", "soon"):
        status, _, body = http("GET", f"{api.url}/jobs/{job_id}?wait={bad}")
        assert (status, body["error"]["code"]) == (422, "invalid_parameters"), bad
        assert body["error"]["details"]["errors"][0]["field"] == "wait"


def test_a_graceful_stop_answers_every_wait_at_once(
    start_service: Callable[..., ServiceProcess],
) -> None:
    api = start_service(SHUTDOWN_TIMEOUT="30")
    ids = submit_sleepers(api.url, 20, 0.1)

    async def scenario() -> list[tuple[int, str, float]]:
        waits = asyncio.create_task(wait_all(api.url, ids, 30))
        wait_deadline = time.monotonic() + 20
        while established(api.port) < len(ids):
            assert time.monotonic() < wait_deadline
            await asyncio.sleep(0.05)
        api.signal(signal.SIGTERM)
        return await waits

    answers = asyncio.run(scenario())
    assert {(status, job) for status, job, _ in answers} == {(200, "queued")}
    assert max(took for _, _, took in answers) < 25  # not held to their 30 s
    assert wait_for(lambda: api.process.poll() is not None, 10) is not None
    assert api.process.returncode == 0
