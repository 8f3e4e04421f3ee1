"""Many jobs in flight in one worker process: async handlers on its event loop, plain ones in
its threads; claims that fit the slots; timeouts, cancels, crashes and shutdown for each kind.

Concurrency is shown without timing: jobs held at a gate (a key they wait for) must all have
started before the gate opens. Speed is in benchmarks/ (see the README's Performance)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from service.config import constants
from service.config.settings import load
from tests.conftest import ServiceProcess, http, publish, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]


@pytest.fixture
def app_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{redis_url}/0")


def status_of(queue_redis: redis.Redis, job_id: str) -> str:
    return (queue_redis.hget(constants.job_key(job_id), "status") or b"").decode()


def all_in(queue_redis: redis.Redis, ids: list[str], status: str) -> bool:
    return all(status_of(queue_redis, i) == status for i in ids)


def counts(app_redis: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in app_redis.hgetall(key).items()}


def result(queue_redis: redis.Redis, job_id: str) -> Any:
    return Job.fetch(job_id, connection=queue_redis, serializer=JSONSerializer).return_value()


def last_error(queue_redis: redis.Redis, job_id: str) -> str:
    job = Job.fetch(job_id, connection=queue_redis, serializer=JSONSerializer)
    return str(job.latest_result().exc_string)


def reason_of(queue_redis: redis.Redis, job_id: str) -> str:
    entries = queue_redis.xrange(constants.result_key(job_id))
    return entries[-1][1].get(b"reason", b"").decode()


def worker_pids(queue_redis: redis.Redis) -> set[int]:
    keys = queue_redis.smembers(constants.WORKERS_KEY)
    return {int(queue_redis.hget(k, "pid") or 0) for k in keys} - {0}


def gated(redis_url: str, job_type: str, n: int, gate: str = "open") -> list[str]:
    return [publish(redis_url, job_type, {"gate": gate}) for _ in range(n)]


@pytest.mark.parametrize("job_type", ["test.async_gated", "test.gated"])
def test_one_process_runs_worker_concurrency_jobs_at_once(
    start_service: Start,
    redis_url: str,
    queue_redis: redis.Redis,
    app_redis: redis.Redis,
    job_type: str,
) -> None:
    # Given one worker process with 20 slots, and 25 jobs that wait at a closed gate
    worker = start_service(worker=True, WORKER_PROCESSES="1", WORKER_CONCURRENCY="20")
    ids = gated(redis_url, job_type, 25)
    # Then 20 of them run at once (on the loop, or in threads), no more
    wait_for(lambda: len(counts(app_redis, "starts")) == 20)
    health = http("GET", f"{worker.url}/health")[2]
    assert health["slots"] == {"busy": 20, "total": 20}
    # When the gate opens, every job finishes, each once
    app_redis.set("open", 1)
    wait_for(lambda: all_in(queue_redis, ids, "finished"), 20)
    assert counts(app_redis, "completions") == dict.fromkeys(ids, 1)
    assert http("GET", f"{worker.url}/health")[2]["slots"]["busy"] == 0
    if job_type == "test.async_gated":
        # with the process's asyncio clients, made once per process, not per job
        results = [result(queue_redis, i) for i in ids]
        assert {r["kind"] for r in results} == {"redis.asyncio.client"}
        assert len({(r["pid"], r["client"]) for r in results}) == 1


def test_an_async_handler_gets_the_asyncio_mongodb_client(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, mongo_uri: str
) -> None:
    start_service(worker=True, MONGODB_URI=mongo_uri)
    job_id = publish(redis_url, "test.async_db", {"key": "k"})
    wait_for(lambda: status_of(queue_redis, job_id) == "finished", 15)
    assert result(queue_redis, job_id) == "AsyncDatabase"


def test_claims_fit_the_slots_across_containers(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given two worker containers of one process with 50 slots each, whose claims have grown
    # on quick jobs (so they would claim far ahead)
    env = {"WORKER_PROCESSES": "1", "WORKER_CONCURRENCY": "50"}
    first, second = (start_service(worker=True, **env) for _ in range(2))
    warm_up = [publish(redis_url, "noop") for _ in range(300)]
    wait_for(lambda: all_in(queue_redis, warm_up, "finished"), 30)
    # When 100 slow jobs arrive
    ids = gated(redis_url, "test.async_gated", 100)
    # Then all 100 run at once, 50 in each container: none waits behind another
    wait_for(lambda: len(counts(app_redis, "starts")) == 100, 15)
    for worker in (first, second):
        assert http("GET", f"{worker.url}/health")[2]["slots"] == {"busy": 50, "total": 50}
    app_redis.set("open", 1)
    wait_for(lambda: all_in(queue_redis, ids, "finished"), 20)


@pytest.mark.parametrize(
    ("job_type", "retired"),
    [
        ("test.async_slow", False),  # its task is cancelled
        ("test.spin", False),  # an exception is raised in its thread
        ("test.slow", True),  # asleep in C code: given up on, its process replaced
    ],
)
def test_a_job_past_its_timeout_is_stopped_whatever_runs_it(
    start_service: Start,
    redis_url: str,
    queue_redis: redis.Redis,
    app_redis: redis.Redis,
    job_type: str,
    retired: bool,
) -> None:
    # Given a job that runs past its 1 s timeout, beside another job in the same process
    worker = start_service(worker=True, WORKER_PROCESSES="1", WORKER_CONCURRENCY="2")
    (neighbour,) = gated(redis_url, "test.gated", 1)
    wait_for(lambda: len(counts(app_redis, "starts")) == 1)
    pids = worker_pids(queue_redis)
    slow = publish(redis_url, job_type, {"key": "k"}, timeout=1)
    # Then it fails with reason timeout
    wait_for(lambda: status_of(queue_redis, slow) == "failed", 15)
    assert reason_of(queue_redis, slow) == "timeout"
    assert "JobTimeout" in last_error(queue_redis, slow)
    if job_type == "test.async_slow":
        assert app_redis.lrange("cancelled", 0, -1) == [slow.encode()]  # it saw its cancel
    # and its neighbour is unharmed: it finishes once its gate opens
    app_redis.set("open", 1)
    wait_for(lambda: status_of(queue_redis, neighbour) == "finished", 15)
    assert counts(app_redis, "completions") == {neighbour: 1}
    # A job that could not be stopped retires its process, which is replaced
    if retired:
        wait_for(lambda: worker_pids(queue_redis) - pids, 15)
        assert "did not stop" in worker.output
    else:
        assert worker_pids(queue_redis) == pids
    after = publish(redis_url, "echo", {"n": 1})
    wait_for(lambda: status_of(queue_redis, after) == "finished", 15)


@pytest.mark.parametrize("job_type", ["test.async_gated", "test.gated"])
def test_a_running_job_is_canceled_whatever_runs_it(
    start_service: Start,
    redis_url: str,
    queue_redis: redis.Redis,
    app_redis: redis.Redis,
    job_type: str,
) -> None:
    api = start_service()
    start_service(worker=True, WORKER_PROCESSES="1", WORKER_CONCURRENCY="5")
    doomed, kept = gated(redis_url, job_type, 2)
    wait_for(lambda: len(counts(app_redis, "starts")) == 2)
    code, _, body = http("DELETE", f"{api.url}/jobs/{doomed}")
    assert (code, body["status"]) == (202, "canceling")
    wait_for(lambda: status_of(queue_redis, doomed) == "canceled", 10)
    app_redis.set("open", 1)
    wait_for(lambda: status_of(queue_redis, kept) == "finished", 10)
    assert counts(app_redis, "completions") == {kept: 1}  # the canceled one never completed


@pytest.mark.timeout(120)
def test_a_crash_punishes_only_the_guilty(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given 49 innocent jobs and one that aborts its process once all 49 are running, at once
    # in one process of 50 slots
    start_service(worker=True, WORKER_PROCESSES="1", WORKER_CONCURRENCY="50", MAX_CRASHES="3")
    app_redis.set("need", 49)
    innocents = gated(redis_url, "test.gated", 49)
    guilty = publish(redis_url, "test.poison", {"gate": "need"}, max_retries=10)
    # When it aborts, every job it held is blamed and re-queued; each then runs alone
    wait_for(lambda: int(app_redis.get("poison_runs") or 0) >= 2, 30)
    app_redis.set("open", 1)
    # Then the 49 finish, each started at most twice; the poison is dead-lettered after
    # MAX_CRASHES runs, with reason worker_lost
    wait_for(lambda: all_in(queue_redis, innocents, "finished"), 60)
    wait_for(lambda: status_of(queue_redis, guilty) == "failed", 30)
    starts = counts(app_redis, "starts")
    assert set(starts) == set(innocents) and max(starts.values()) <= 2
    assert counts(app_redis, "completions") == dict.fromkeys(innocents, 1)
    assert int(app_redis.get("poison_runs") or 0) == 3
    assert reason_of(queue_redis, guilty) == "worker_lost"
    assert queue_redis.hget(constants.job_key(guilty), "crashes") == b"3"


@pytest.mark.timeout(120)
def test_shutdown_interrupts_async_and_thread_jobs_and_loses_none(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given 50 async and 50 thread jobs in flight in one process
    env = {"WORKER_PROCESSES": "1", "WORKER_CONCURRENCY": "100"}
    worker = start_service(worker=True, SHUTDOWN_TIMEOUT="1", **env)
    ids = gated(redis_url, "test.async_gated", 50) + gated(redis_url, "test.gated", 50)
    wait_for(lambda: len(counts(app_redis, "starts")) == 100, 20)
    # When SIGTERM comes and they outlast SHUTDOWN_TIMEOUT
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == constants.EXIT_OK
    # Then each is back on its queue, interrupted, its attempt not counted
    assert all_in(queue_redis, ids, "queued")
    assert queue_redis.llen(constants.queue_key("app-queue")) == 100
    assert {reason_of(queue_redis, i) for i in ids} == {"interrupted"}
    assert "100 interrupted and re-queued" in worker.output
    # and the next worker runs each exactly once
    app_redis.set("open", 1)
    start_service(worker=True, **env)
    wait_for(lambda: all_in(queue_redis, ids, "finished"), 30)
    assert counts(app_redis, "completions") == dict.fromkeys(ids, 1)


def test_worker_processes_defaults_to_the_cpus_the_container_may_use() -> None:
    from service.config import cpus

    assert load({}).worker_processes == min(64, cpus.available())
    assert load({"WORKER_PROCESSES": ""}).worker_processes == min(64, cpus.available())
    assert load({"WORKER_PROCESSES": "3"}).worker_processes == 3


def test_worker_metrics_show_the_slots(start_service: Start, redis_url: str) -> None:
    worker = start_service(worker=True, WORKER_PROCESSES="2", WORKER_CONCURRENCY="7")
    text = http_text(f"{worker.url}/metrics")
    assert "service_worker_slots 14.0" in text
    assert "service_worker_slots_busy 0.0" in text


def http_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.timeout(120)
def test_a_draining_process_whose_supervisor_is_killed_stops_its_jobs_and_exits(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given a process draining two jobs that would outlast a long SHUTDOWN_TIMEOUT
    env = {"WORKER_PROCESSES": "1", "WORKER_CONCURRENCY": "2", "SHUTDOWN_TIMEOUT": "60"}
    worker = start_service(worker=True, **env)
    ids = gated(redis_url, "test.async_gated", 1) + gated(redis_url, "test.gated", 1)
    wait_for(lambda: len(counts(app_redis, "starts")) == 2, 20)
    (pid,) = worker_pids(queue_redis)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: http("GET", f"{worker.url}/health")[0] == 503)
    # When its supervisor is killed, so no one will force the drain's end
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    # Then the process interrupts its jobs, re-queues them and exits on its own, well before
    # SHUTDOWN_TIMEOUT
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or zombie(pid), timeout=15)
    wait_for(lambda: all_in(queue_redis, ids, "queued"), 10)
    assert {reason_of(queue_redis, i) for i in ids} == {"interrupted"}


def zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
