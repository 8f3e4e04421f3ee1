"""The Python client against the real API process and a real worker process on the suite's
redis-server: results typed, errors typed with the API's codes, waits that long-poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from service.client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    Job,
    NotFound,
    RateLimited,
    ServiceError,
    Submission,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    wire,
)
from service.dev.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import ServiceProcess, base_env, http

pytestmark = pytest.mark.slow

KEY = "client-test-key"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One API (with an API key) and one worker for the module, on a Redis of the module's
    own (the suite's is emptied by other tests, whose jobs this worker would also take);
    the URL of the API."""
    folder = tmp_path_factory.mktemp("client")
    server = EmbeddedRedis().start()
    redis_server = server.url
    env = base_env(redis_server, PORT=str(free_port()), API_KEYS=KEY)
    api = ServiceProcess(env, log=folder / "api.log").wait_healthy()
    worker_env = base_env(
        redis_server, WORKER_MODE="true", PORT=str(free_port()), WORKER_CONCURRENCY="4"
    )
    worker = ServiceProcess(worker_env, log=folder / "worker.log").wait_healthy()
    yield api.url
    worker.stop()
    api.stop()
    server.stop()


@pytest.fixture
def client(api: str) -> Iterator[Client]:
    with Client(api, api_key=KEY, timeout=5) as client:
        yield client


def test_submit_then_wait_gives_the_finished_job_typed(client: Client) -> None:
    accepted = client.submit("echo", {"hello": "world"}, priority="high", max_retries=1)
    assert (accepted.type, accepted.queue, accepted.status) == ("echo", "app-queue.high", "queued")
    job = client.wait(accepted.id, timeout=20)
    assert isinstance(job, Job)
    assert (job.status, job.result, job.attempts, job.retries_left) == (
        "finished",
        {"hello": "world"},
        1,
        1,
    )
    assert job.done and job.ended_at is not None and job.ended_at.tzinfo is not None
    assert [attempt.outcome for attempt in job.history] == ["finished"]
    assert client.get(accepted.id) == job


def test_a_wait_is_one_long_poll_answered_when_the_job_ends(client: Client) -> None:
    accepted = client.submit("sleep", {"seconds": 1})
    started = time.monotonic()
    job = client.get(accepted.id, wait=15)  # one request
    assert job.status == "finished"
    assert time.monotonic() - started < 15  # answered at the end, not at the deadline


def test_submit_many_and_a_delayed_job(client: Client) -> None:
    accepted = client.submit_many(
        [Submission("noop"), Submission("echo", {"n": 2}, priority="low")]
    )
    assert [a.queue for a in accepted] == ["app-queue", "app-queue.low"]
    assert [client.wait(a.id, timeout=20).status for a in accepted] == ["finished"] * 2
    later = client.submit("noop", delay=60)
    assert later.status == "scheduled" and later.run_at is not None


def test_errors_are_typed_with_the_api_s_codes(client: Client) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        client.submit("no.such.type", {})
    assert invalid.value.status == 422 and invalid.value.code == "invalid_job"
    assert "known_types" in invalid.value.details
    with pytest.raises(InvalidRequest) as bad_payload:
        client.submit("sleep", {"seconds": "long"})
    assert bad_payload.value.details["errors"][0]["field"] == "payload.seconds"
    with pytest.raises(NotFound) as missing:
        client.get("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    with pytest.raises(InvalidRequest) as too_long:
        client.send(client_get_call("0" * 32, 31))
    assert too_long.value.code == "invalid_parameters"
    client.submit("noop", idempotency_key="order-1")
    with pytest.raises(Conflict) as conflict:
        client.submit("echo", {"other": True}, idempotency_key="order-1")
    assert conflict.value.code == "idempotency_conflict" and "id" in conflict.value.details
    with pytest.raises(ValueError, match="wait"):
        client.get("0" * 32, wait=31)


def client_get_call(job_id: str, wait: float) -> wire.Call:
    """A GET with a wait the client itself would refuse (to see the API's answer)."""
    return wire.Call("GET", f"/jobs/{job_id}", {"wait": str(wait)})


def test_cancel_a_scheduled_job_then_a_conflict(client: Client) -> None:
    accepted = client.submit("noop", delay=300)
    canceled = client.cancel(accepted.id)
    assert (canceled.id, canceled.status) == (accepted.id, "canceled")
    assert client.wait(accepted.id, timeout=5).status == "canceled"
    with pytest.raises(Conflict) as again:
        client.cancel(accepted.id)
    assert again.value.code == "job_not_cancelable"


def test_cancel_a_running_job_and_wait_for_it(client: Client) -> None:
    accepted = client.submit("sleep", {"seconds": 60})
    deadline = time.monotonic() + 10
    while client.get(accepted.id).status != "started":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.cancel(accepted.id).status == "canceling"
    assert client.wait(accepted.id, timeout=20).status == "canceled"


def test_dead_letters_listed_page_by_page_and_retried(client: Client) -> None:
    ids = [client.submit("fail", {"message": f"client {n}"}).id for n in range(3)]
    assert {client.wait(i, timeout=20).status for i in ids} == {"failed"}
    page = client.dead(type="fail", error="client", limit=2)
    assert len(page.jobs) == 2 and page.next_cursor is not None
    listed = list(client.iter_dead(type="fail", error="client", page_size=1))
    assert sorted(job.id for job in listed) == sorted(ids)
    assert listed[0].reason == "exception" and listed[0].payload["message"].startswith("client")
    assert listed[0].failed_at is not None
    requeued = client.retry_dead(ids[0])
    assert (requeued.id, requeued.status) == (ids[0], "queued")
    again = client.wait(ids[0], timeout=20)
    assert again.status == "failed" and len(again.history) == 2
    dry = client.retry_dead_matching(type="fail", error="client", dry_run=True)
    assert dry.dry_run and dry.count == 3 and sorted(dry.ids) == sorted(ids)
    with pytest.raises(NotFound) as not_dead:
        client.retry_dead("0" * 32)
    assert not_dead.value.code == "not_in_dead_letter_queue"


def test_a_wait_times_out_with_the_job_as_last_seen(client: Client) -> None:
    accepted = client.submit("sleep", {"seconds": 5})
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timeout:
        client.wait(accepted.id, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert timeout.value.job.id == accepted.id
    assert timeout.value.job.status in ("queued", "started")
    assert isinstance(timeout.value, TimeoutError) and isinstance(timeout.value, ServiceError)


def test_the_api_key(api: str) -> None:
    with Client(api) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.submit("noop")
    assert refused.value.status == 401
    with Client(api, api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.get("0" * 32)


def test_no_api_is_unavailable() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=1) as nowhere,
        pytest.raises(Unavailable) as down,
    ):
        nowhere.get("0" * 32)
    assert down.value.status is None and down.value.code == "unreachable"


def test_the_async_client(api: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api, api_key=KEY, timeout=5) as jobs:
            accepted = await jobs.submit("echo", {"n": 1})
            many = await jobs.submit_many([Submission("echo", {"n": n}) for n in range(3)])
            done = await asyncio.gather(
                jobs.wait(accepted.id, timeout=20), *(jobs.wait(a.id, 20) for a in many)
            )
            assert [job.result for job in done] == [{"n": 1}, {"n": 0}, {"n": 1}, {"n": 2}]
            with pytest.raises(NotFound):
                await jobs.get("0" * 32)
            scheduled = await jobs.submit("noop", delay=300)
            assert (await jobs.cancel(scheduled.id)).status == "canceled"
            failed = await jobs.submit("fail", {"message": "async one"})
            assert (await jobs.wait(failed.id, 20)).status == "failed"
            dead = [job.id async for job in jobs.iter_dead(error="async one", page_size=1)]
            assert dead == [failed.id]
            assert (await jobs.retry_dead(failed.id)).status == "queued"
            sleeping = await jobs.submit("sleep", {"seconds": 5})
            with pytest.raises(WaitTimeout):
                await jobs.wait(sleeping.id, timeout=0.3)

    asyncio.run(scenario())


def test_a_full_queue_is_rate_limited_with_retry_after(
    start_service: Callable[..., ServiceProcess],
) -> None:
    api = start_service(MAX_BACKLOG="1")
    # Paused, so that no worker (the module's may run) takes the first job.
    assert http("POST", f"{api.url}/queues/app-queue/pause")[0] == 200
    try:
        with Client(api.url) as client:
            client.submit("noop")
            with pytest.raises(RateLimited) as full:
                client.submit("noop")
    finally:
        http("POST", f"{api.url}/queues/app-queue/resume")
    assert full.value.code == "queue_full" and full.value.retry_after is not None
    assert full.value.details["max_backlog"] == 1
