"""GET /metrics on the API and on the worker's health server, scraped after real jobs ran
through real processes: the counters and gauges must match what happened."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.config import constants
from tests.conftest import ServiceProcess, http, publish, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TERMINAL = {"finished", "failed", "canceled"}


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    request = urllib.request.Request(f"{url}/metrics", headers=AUTH)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_until(url: str, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until the figures satisfy `condition` (gauges refresh every interval)."""
    latest: list[Samples] = []

    def check() -> bool:
        latest[:] = [scrape(url)]
        return condition(latest[0])

    wait_for(check, timeout=15, interval=0.2)
    return latest[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def submit(api: ServiceProcess, body: dict[str, object], headers: dict[str, str] = AUTH) -> str:
    status, _, reply = http("POST", f"{api.url}/jobs", body, headers)
    assert status == 202, reply
    return str(reply["id"])


def wait_ended(api: ServiceProcess, ids: list[str]) -> None:
    def ended() -> bool:
        return all(
            http("GET", f"{api.url}/jobs/{i}", headers=AUTH)[2]["status"] in TERMINAL for i in ids
        )

    wait_for(ended, timeout=30, interval=0.1)


@pytest.mark.timeout(90)
def test_both_endpoints_count_what_happened(start_service: Start) -> None:
    common = {"API_KEYS": KEY, "WORKER_PROCESSING_INTERVAL": "1000"}
    api = start_service(MAX_BODY_BYTES="2048", **common)
    worker = start_service(worker=True, WORKER_PROCESSES="2", **common)
    ids = [submit(api, {"type": "noop", "priority": "high"}) for _ in range(2)]
    ids += [submit(api, {"type": "noop"}) for _ in range(3)]
    ids.append(submit(api, {"type": "test.flaky", "payload": {"fail_times": 1}}))  # retried once
    ids.append(
        submit(api, {"type": "test.flaky", "payload": {"fail_times": 5}, "max_retries": 0})
    )  # dead
    ids.append(submit(api, {"type": "test.slow", "payload": {"key": "k"}}))  # times out: dead
    # Refused: no key, a payload the schema rejects, a body over the limit.
    assert http("POST", f"{api.url}/jobs", {"type": "noop"})[0] == 401
    assert http("POST", f"{api.url}/jobs", {"type": "test.flaky", "payload": {}}, AUTH)[0] == 422
    big = {"type": "echo", "payload": {"text": "x" * 4096}}
    assert http("POST", f"{api.url}/jobs", big, AUTH)[0] == 413
    wait_ended(api, ids)
    # test.slow sleeps in C code, where its timeout cannot reach it: its process gives up on it
    # STOP_GRACE_SECONDS after the job is recorded, and is replaced. Until it exits it is alive
    # and its slot busy.
    wait_for(lambda: "retired (a job did not stop" in worker.output, timeout=30)
    jobs = scrape_until(
        worker.url,
        lambda s: (
            value(s, "service_worker_processes") == 2 and value(s, "service_jobs_in_progress") == 0
        ),
    )
    assert value(jobs, "service_jobs_started_total", type="noop") == 5
    assert value(jobs, "service_jobs_started_total", type="test.flaky") == 3
    assert value(jobs, "service_jobs_finished_total", type="noop") == 5
    assert value(jobs, "service_jobs_finished_total", type="test.flaky") == 1
    assert value(jobs, "service_jobs_failed_total", type="test.flaky", reason="exception") == 2
    assert value(jobs, "service_jobs_failed_total", type="test.slow", reason="timeout") == 1
    assert value(jobs, "service_jobs_retried_total", type="test.flaky") == 1
    assert value(jobs, "service_jobs_dead_total", type="test.flaky") == 1
    assert value(jobs, "service_jobs_dead_total", type="test.slow") == 1
    assert value(jobs, "service_job_duration_seconds_count", type="noop") == 5
    assert value(jobs, "service_job_queue_wait_seconds_count", type="test.flaky") == 3
    assert value(jobs, "service_job_duration_seconds_bucket", type="test.slow", le="0.5") == 0
    assert value(jobs, "service_job_duration_seconds_bucket", type="test.slow", le="5.0") == 1
    assert value(jobs, "service_worker_processes") == 2
    assert value(jobs, "service_jobs_in_progress") == 0
    assert value(jobs, "service_worker_process_restarts_total") == 0

    web = scrape(api.url)
    assert value(web, "service_jobs_accepted_total", type="noop", priority="high") == 2
    assert value(web, "service_jobs_accepted_total", type="noop", priority="default") == 3
    assert value(web, "service_jobs_accepted_total", type="test.flaky", priority="default") == 2
    assert value(web, "service_jobs_rejected_total", reason="auth") == 1
    assert value(web, "service_jobs_rejected_total", reason="validation") == 1
    assert value(web, "service_jobs_rejected_total", reason="size") == 1
    assert value(web, "service_publish_duration_seconds_count") == 8
    posted = {"route": "/jobs", "method": "POST"}
    assert value(web, "service_http_requests_total", status="202", **posted) == 8
    assert value(web, "service_http_requests_total", status="401", **posted) == 1
    # Ids never become labels: GET /jobs/{id} is one series, whatever the id.
    gets = value(
        web, "service_http_requests_total", route="/jobs/{job_id}", method="GET", status="200"
    )
    assert gets >= len(ids)
    assert not any(i in str(labels) for (_, labels) in web for i in ids)

    # The dead-letter gauge, on both, once their figures refresh (every interval).
    for url in (api.url, worker.url):
        scrape_until(url, lambda s: value(s, "service_queue_dead_jobs", queue="app-queue") == 2)


@pytest.mark.timeout(60)
def test_both_metrics_endpoints_need_the_key_when_api_keys_are_set(start_service: Start) -> None:
    """Job types and counts are for the holders of a key (Prometheus sends one as a bearer
    token); the worker's liveness and readiness stay open for probes."""
    api = start_service(API_KEYS=KEY)
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", API_KEYS=KEY)
    for url in (api.url, worker.url):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, answer_headers, body = http("GET", f"{url}/metrics", headers=headers)
            assert (status, body["error"]["code"]) == (401, "unauthorized"), url
            challenge = {k.lower(): v for k, v in answer_headers.items()}["www-authenticate"]
            assert challenge == 'Bearer realm="jobs"'
        assert value(scrape(url), "service_worker_processes") in (0, 1)  # with the key: served
    assert http("GET", f"{worker.url}/health")[0] == 200
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200)
    # A worker without API_KEYS (nothing to check against) serves its metrics to anyone.
    open_worker = start_service(worker=True, WORKER_CONCURRENCY="1")
    with urllib.request.urlopen(f"{open_worker.url}/metrics", timeout=5) as response:
        assert response.status == 200


@pytest.mark.timeout(90)
def test_backlog_gauges_show_waiting_work_and_who_serves_it(start_service: Start) -> None:
    """A worker serving only `reports`: jobs for app-queue wait, and both endpoints say so."""
    common = {"API_KEYS": KEY, "WORKER_PROCESSING_INTERVAL": "1000"}
    api = start_service(**common)
    worker = start_service(worker=True, WORKER_PROCESSES="2", WORKER_QUEUES="reports", **common)
    for _ in range(2):
        submit(api, {"type": "noop", "priority": "high"})
    for _ in range(3):
        submit(api, {"type": "noop", "priority": "low"})
    submit(api, {"type": "noop", "delay": 3600})
    report = submit(api, {"type": "test.report", "payload": {"key": "r"}})
    wait_ended(api, [report])
    posted_at = time.monotonic()

    def refreshed(samples: Samples) -> bool:  # the API's figures, once workers registered
        age = value(samples, "service_queue_oldest_job_age_seconds", queue="app-queue")
        return value(samples, "service_queue_workers", queue="reports") == 2 and age > 0

    samples = scrape_until(api.url, refreshed)
    assert value(samples, "service_queue_waiting_jobs", queue="app-queue", priority="high") == 2
    assert value(samples, "service_queue_waiting_jobs", queue="app-queue", priority="default") == 0
    assert value(samples, "service_queue_waiting_jobs", queue="app-queue", priority="low") == 3
    assert value(samples, "service_queue_scheduled_jobs", queue="app-queue") == 1
    assert value(samples, "service_queue_due_jobs", queue="app-queue") == 0
    assert value(samples, "service_queue_workers", queue="app-queue") == 0
    age = value(samples, "service_queue_oldest_job_age_seconds", queue="app-queue")
    assert 0 < age < time.monotonic() - posted_at + 30
    assert value(samples, "service_queue_waiting_jobs", queue="reports", priority="default") == 0

    # The worker exports only the queues it serves (its figures refresh every interval).
    jobs = scrape_until(
        worker.url, lambda s: value(s, "service_queue_workers", queue="reports") == 2
    )
    assert ("service_queue_workers", frozenset({("queue", "app-queue")})) not in jobs


@pytest.mark.timeout(60)
def test_one_json_log_line_per_job_outcome(start_service: Start, redis_url: str) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", LOG_FORMAT="json")
    flaky = publish(redis_url, "test.flaky", {"fail_times": 1}, max_retries=2)
    echo = publish(redis_url, "echo", {"password": "hunter2"})

    def outcomes() -> list[dict[str, object]]:
        lines = [orjson.loads(line) for line in worker.output.splitlines() if line.startswith("{")]
        return [line for line in lines if "outcome" in line]

    wait_for(lambda: len(outcomes()) == 3, timeout=20)
    by_job = {(line["job_id"], line["attempt"]): line for line in outcomes()}
    retried, finished = by_job[(flaky, 1)], by_job[(flaky, 2)]
    assert (retried["outcome"], retried["level"]) == ("retried", "warning")
    assert "RuntimeError: attempt 1 fails" in str(retried["message"])
    assert (finished["outcome"], finished["level"]) == ("finished", "info")
    assert finished["job_type"] == "test.flaky" and finished["queue"] == "app-queue"
    assert isinstance(finished["duration"], float)
    assert by_job[(echo, 1)]["outcome"] == "finished"
    assert "hunter2" not in worker.output  # payloads are never logged


@pytest.mark.timeout(60)
def test_a_type_written_straight_into_redis_is_labelled_unknown(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    """Labels take only registered job types: a job's type is read from Redis, where anyone
    who can write may put any name."""
    # Given a job whose type no handler registers, written into Redis by hand
    ghost = publish(redis_url, "os.system", {"command": "true"})
    # and a started job of another such type, whose worker vanished (recovered by housekeeping)
    lost = publish(redis_url, "os.popen", {"command": "true"})
    queue_redis.lrem(constants.queue_key("app-queue"), 1, lost)
    queue_redis.hset(constants.job_key(lost), mapping={"status": "started", "worker_name": "gone"})
    queue_redis.zadd(constants.registry_key("started", "app-queue"), {f"{lost}:gonex1": 1})
    # When a worker runs them
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_PROCESSING_INTERVAL="1000")
    # Then both fail, and its metrics count them as `unknown`, never under their names
    samples = scrape_until(
        worker.url, lambda s: value(s, "service_jobs_dead_total", type="unknown") == 2
    )
    assert value(samples, "service_jobs_started_total", type="unknown") == 2
    assert value(samples, "service_jobs_failed_total", type="unknown", reason="exception") == 2
    assert value(samples, "service_jobs_failed_total", type="unknown", reason="worker_lost") == 1
    assert value(samples, "service_jobs_retried_total", type="unknown") == 1
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "os.system" not in text and "os.popen" not in text
    assert {queue_redis.hget(constants.job_key(i), "status") for i in (ghost, lost)} == {b"failed"}
