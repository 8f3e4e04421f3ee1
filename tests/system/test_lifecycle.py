"""The job lifecycle through the HTTP API and real worker processes: priorities, schedules,
retries with backoff, timeouts, specialization, cancel, idempotency, progress, expiry."""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from service.config import constants
from service.jobs import records
from tests.conftest import ServiceProcess, http, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]


def post(api: ServiceProcess, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    status, _, response = http("POST", f"{api.url}/jobs", body, headers=headers)
    return status, response


def view(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{api.url}/jobs/{job_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_job(api: ServiceProcess, job_id: str, *statuses: str, timeout: float = 15) -> Any:
    return wait_for(lambda: (v := view(api, job_id))["status"] in statuses and v, timeout)


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_a_single_worker_drains_high_before_default_before_low(start_service: Start) -> None:
    api = start_service()
    order = ["low", "default", "high", "low", "high", "default"]
    ids = {
        post(api, {"type": "echo", "payload": {"n": n}, "priority": p})[1]["id"]: p
        for n, p in enumerate(order)
    }
    assert {view(api, i)["queue"] for i in ids} == {"app-queue.low", "app-queue", "app-queue.high"}
    start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_BATCH_SIZE="1")
    done = [wait_job(api, i, "finished") for i in ids]
    ran = [ids[v["id"]] for v in sorted(done, key=lambda v: v["started_at"])]
    assert ran == ["high", "high", "default", "default", "low", "low"]


def test_a_delayed_job_is_scheduled_then_runs_on_time(start_service: Start) -> None:
    api = start_service()
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_PROCESSING_INTERVAL="1000")
    # Consuming, not just alive: a loaded machine can take seconds to start a process.
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200, timeout=30)
    status, accepted = post(api, {"type": "noop", "delay": 1.5})
    assert status == 202 and accepted["status"] == "scheduled"
    run_at = epoch(accepted["run_at"])
    assert view(api, accepted["id"])["status"] == "scheduled"
    done = wait_job(api, accepted["id"], "finished")
    started = epoch(done["started_at"])
    assert run_at <= started <= run_at + 1.0  # within one WORKER_PROCESSING_INTERVAL


def test_run_at_schedules_and_a_past_run_at_queues_at_once(start_service: Start) -> None:
    api = start_service()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, accepted = post(api, {"type": "noop", "run_at": future})
    assert (status, accepted["status"]) == (202, "scheduled")
    assert abs(epoch(accepted["run_at"]) - datetime.fromisoformat(future).timestamp()) < 0.01
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert post(api, {"type": "noop", "run_at": past})[1]["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no timezone
        ({"delay": 1, "run_at": "2030-01-01T00:00:00Z"}, "body"),
        ({"delay": -1}, "delay"),
        ({"priority": "urgent"}, "priority"),
        ({"max_retries": 99}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"backoff": {"type": "linear"}}, "backoff.type"),
        ({"result_ttl": 0}, "result_ttl"),
    ],
)
def test_bad_options_are_422_and_nothing_is_enqueued(
    start_service: Start, queue_redis: redis.Redis, body: dict[str, Any], field: str
) -> None:
    api = start_service()
    status, response = post(api, {"type": "noop", **body})
    assert status == 422
    assert field in [e["field"] for e in response["error"]["details"]["errors"]]
    assert queue_redis.keys("rq:job:*") == []


def test_two_worker_containers_promote_but_never_run_a_job_twice(
    start_service: Start, redis_url: str
) -> None:
    api = start_service()
    for _ in range(2):
        start_service(worker=True, WORKER_PROCESSES="2", WORKER_PROCESSING_INTERVAL="1000")
    ids = [
        post(api, {"type": "test.count", "payload": {"key": f"runs:{n}"}, "delay": 0.5})[1]["id"]
        for n in range(40)
    ]
    for job_id in ids:
        wait_job(api, job_id, "finished")
    app = redis.Redis.from_url(f"{redis_url}/0")
    assert [app.get(f"runs:{n}") for n in range(40)] == [b"1"] * 40
    app.close()


def test_retries_follow_the_backoff_and_keep_every_attempt(start_service: Start) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_PROCESSING_INTERVAL="1000")
    backoff = {"type": "exponential", "base": 0.4, "cap": 10, "jitter": False}
    _, accepted = post(
        api,
        {"type": "test.flaky", "payload": {"fail_times": 2}, "max_retries": 2, "backoff": backoff},
    )
    done = wait_job(api, accepted["id"], "finished")
    assert done["attempts"] == 3 and done["result"] == 3
    history = done["history"]
    assert [h["outcome"] for h in history] == ["retried", "retried", "finished"]
    assert [h["reason"] for h in history] == ["exception", "exception", None]
    assert history[0]["error"] == "RuntimeError: attempt 1 fails"
    starts = [epoch(h["started_at"]) for h in history]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.4 <= gaps[0] < 0.4 + 1.0 and 0.8 <= gaps[1] < 0.8 + 1.0  # base, 2·base


def test_a_timed_out_job_is_retried_then_fails_with_the_reason(start_service: Start) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1")
    _, accepted = post(
        api,
        {
            "type": "test.slow",
            "payload": {"key": "k"},
            "max_retries": 1,
            "backoff": {"type": "fixed", "base": 0},
        },
    )
    done = wait_job(api, accepted["id"], "failed", timeout=20)
    assert [h["reason"] for h in done["history"]] == ["timeout", "timeout"]
    assert done["error"] == "JobTimeout: job exceeded its timeout of 1s"


def test_worker_queues_restrict_what_a_container_runs(start_service: Start) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_QUEUES="app-queue")
    _, report = post(api, {"type": "test.report", "payload": {"key": "k"}})
    _, echo = post(api, {"type": "echo", "payload": {}})
    wait_job(api, echo["id"], "finished")
    queues = {q["name"]: q for q in http("GET", f"{api.url}/queues")[2]["queues"]}
    assert queues["reports"]["workers"] == 0 and queues["reports"]["waiting"] == 1
    assert queues["app-queue"]["workers"] == 1
    assert view(api, report["id"])["status"] == "queued"
    start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_QUEUES="reports")
    assert wait_job(api, report["id"], "finished")["result"] == "reports"


def test_cancel_a_queued_and_a_scheduled_job_at_once(
    start_service: Start, queue_redis: redis.Redis
) -> None:
    api = start_service()
    _, queued = post(api, {"type": "echo", "payload": {}})
    _, scheduled = post(api, {"type": "echo", "payload": {}, "delay": 60})
    for job in (queued, scheduled):
        status, _, body = http("POST", f"{api.url}/jobs/{job['id']}/cancel")
        assert (status, body["status"]) == (200, "canceled")
        assert view(api, job["id"])["status"] == "canceled"  # kept, as canceled
    assert queue_redis.llen(constants.queue_key("app-queue")) == 0
    assert queue_redis.zcard("rq:scheduled:app-queue") == 0
    assert queue_redis.zcard("rq:canceled:app-queue") == 2
    assert http("POST", f"{api.url}/jobs/{queued['id']}/cancel")[0] == 409  # already canceled
    # DELETE, the older spelling, answers the same.
    assert http("DELETE", f"{api.url}/jobs/{scheduled['id']}")[0] == 409


def test_cancel_a_running_job_stops_it_without_retry(start_service: Start, redis_url: str) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1")
    app = redis.Redis.from_url(f"{redis_url}/0")
    _, job = post(api, {"type": "test.block", "payload": {"key": "never"}, "max_retries": 3})
    wait_for(lambda: app.llen("started") == 1)
    status, _, body = http("POST", f"{api.url}/jobs/{job['id']}/cancel")
    assert (status, body["status"]) == (202, "canceling")
    done = wait_job(api, job["id"], "canceled")
    assert done["history"][-1]["outcome"] == "canceled"
    assert done["retries_left"] == 3 and app.llen("finished") == 0
    _, echo = post(api, {"type": "echo", "payload": {}})  # the worker carries on
    wait_job(api, echo["id"], "finished")
    assert http("POST", f"{api.url}/jobs/{echo['id']}/cancel")[0] == 409
    assert http("POST", f"{api.url}/jobs/{'0' * 32}/cancel")[0] == 404
    app.close()


def test_idempotency_key_makes_exactly_one_job_under_concurrency(
    start_service: Start, queue_redis: redis.Redis
) -> None:
    api = start_service()
    body = {"type": "echo", "payload": {"order": 42}}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda _: post(api, body, **{"Idempotency-Key": "order-42"}), range(50))
        )
    assert sorted({status for status, _ in results}) == [200, 202]
    assert [status for status, _ in results].count(202) == 1
    assert len({response["id"] for _, response in results}) == 1
    assert len(queue_redis.keys("rq:job:*")) == 1
    same_in_body = post(api, {**body, "idempotency_key": "order-42"})
    assert same_in_body[0] == 200
    status, conflict = post(
        api, {"type": "echo", "payload": {"order": 43}}, **{"Idempotency-Key": "order-42"}
    )
    assert status == 409 and conflict["error"]["code"] == "idempotency_conflict"
    assert len(queue_redis.keys("rq:job:*")) == 1


def test_progress_shows_in_the_job(start_service: Start, redis_url: str) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1")
    _, job = post(api, {"type": "test.progress", "payload": {"key": "go"}})
    running = wait_for(lambda: (v := view(api, job["id"]))["progress"] and v)
    assert running["progress"]["percent"] == 50 and running["progress"]["message"] == "half way"
    app = redis.Redis.from_url(f"{redis_url}/0")
    app.set("go", 1)
    app.close()
    assert wait_job(api, job["id"], "finished")["progress"]["percent"] == 100


def test_an_expired_job_is_explained_not_just_404(start_service: Start) -> None:
    api = start_service()
    old = records.new_id(now=1_700_000_000)
    status, _, body = http("GET", f"{api.url}/jobs/{old}")
    assert status == 410 and body["error"]["code"] == "job_expired"
    assert body["error"]["details"]["created_at"].startswith("2023-11-14")
    recent = records.new_id()
    assert http("GET", f"{api.url}/jobs/{recent}")[0] == 404
    assert http("GET", f"{api.url}/jobs/{'f' * 32}")[0] == 404  # not one of our ids


def test_a_poison_job_is_quarantined_after_max_crashes(start_service: Start) -> None:
    api = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1", MAX_CRASHES="2")
    _, job = post(api, {"type": "test.crash", "payload": {"key": "crashes"}})
    dead = wait_job(api, job["id"], "failed", timeout=30)
    assert dead["crashes"] == 2 and dead["attempts"] == 2
    assert [h["reason"] for h in dead["history"]] == ["worker_lost", "worker_lost"]
    assert [h["outcome"] for h in dead["history"]] == ["retried", "failed"]
    assert dead["error"].startswith("WorkerLost")
