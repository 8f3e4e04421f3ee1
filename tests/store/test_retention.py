"""Retention limits: how long an ended job is kept (MAX_RESULT_TTL, MAX_FAILURE_TTL, and run_at
no farther ahead than a year) and how many dead jobs a queue keeps (DEAD_MAX_JOBS), at the API's
edge, at start-up, and inside the scripts that end a job, whoever wrote it."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import redis.asyncio
from rq.queue import Queue
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from service import status
from service.api.app import create_app
from service.config import constants
from service.config.settings import Retention, load
from service.dev.embedded_redis import free_port
from service.jobs import records, registry
from service.jobs.registry import EmptyPayload, Registry, TtlAboveCeiling
from service.jobs.states import Ending, Fate
from service.store import housekeeping
from service.store.claim import ClaimSync
from service.store.complete import CompleteSync, Completion
from service.store.publish import publish_now
from service.store.publisher import Store
from tests.conftest import ROOT, TEST_MODULES, ServiceProcess, base_env, http, publish, wait_for

Start = Callable[..., ServiceProcess]
DAY = 24 * 3600
MONTH = 30 * DAY
LIMITS = Retention(max_result_ttl=100, max_failure_ttl=200, dead_max_jobs=1000)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def client_for(redis_url: str, **env: str) -> TestClient:
    """The API on the test's Redis, its job types within the settings' ceilings (as at start)."""
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0", **env})
    handlers = registry.load(TEST_MODULES).within(settings.max_result_ttl, settings.max_failure_ttl)
    return TestClient(create_app(settings, handlers), raise_server_exceptions=False)


def errors_of(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 422, response.text
    found: list[dict[str, str]] = response.json()["error"]["details"]["errors"]
    return found


# --- At the edge: a request's TTLs and run_at ---------------------------------------------------
def test_a_ttl_above_its_ceiling_is_422_naming_the_field_and_the_ceiling(
    redis_url: str, queue_redis: redis.Redis
) -> None:
    with client_for(redis_url, MAX_RESULT_TTL="3600", MAX_FAILURE_TTL="7200") as client:
        # When a job asks for more than the operator allows, Then 422 says which and how much
        single = client.post(
            "/jobs", json={"type": "echo", "result_ttl": 3601, "failure_ttl": 7201}
        )
        assert errors_of(single) == [
            {
                "field": "result_ttl",
                "message": "Input should be at most 3600 seconds (MAX_RESULT_TTL)",
            },
            {
                "field": "failure_ttl",
                "message": "Input should be at most 7200 seconds (MAX_FAILURE_TTL)",
            },
        ]
        batch = client.post(
            "/jobs/batch", json={"jobs": [{"type": "noop"}, {"type": "noop", "result_ttl": 3601}]}
        )
        assert [e["field"] for e in errors_of(batch)] == ["jobs[1].result_ttl"]
        assert queue_redis.keys("rq:job:*") == []  # nothing enqueued
        # At the ceiling, it is kept as asked
        accepted = client.post(
            "/jobs", json={"type": "echo", "result_ttl": 3600, "failure_ttl": 7200}
        )
        assert accepted.status_code == 202
        key = constants.job_key(accepted.json()["id"])
        assert queue_redis.hmget(key, "result_ttl", "failure_ttl") == [b"3600", b"7200"]


def test_the_default_ceilings_are_a_week_and_a_month(redis_url: str) -> None:
    with client_for(redis_url) as client:
        for field, ceiling in (("result_ttl", 7 * DAY), ("failure_ttl", MONTH)):
            assert client.post("/jobs", json={"type": "noop", field: ceiling}).status_code == 202
            over = client.post("/jobs", json={"type": "noop", field: ceiling + 1})
            assert [e["field"] for e in errors_of(over)] == [field]


def test_job_types_that_set_no_ttl_follow_a_lower_ceiling(
    redis_url: str, queue_redis: redis.Redis
) -> None:
    # Given ceilings below the default TTLs (a day, a week), When a plain job is published
    with client_for(redis_url, MAX_RESULT_TTL="3600", MAX_FAILURE_TTL="7200") as client:
        accepted = client.post("/jobs", json={"type": "noop"})
    # Then it takes the ceilings
    key = constants.job_key(accepted.json()["id"])
    assert queue_redis.hmget(key, "result_ttl", "failure_ttl") == [b"3600", b"7200"]


def test_the_openapi_maximum_follows_the_setting(redis_url: str) -> None:
    with client_for(redis_url, MAX_RESULT_TTL="3600", MAX_FAILURE_TTL="7200") as client:
        document = client.get("/openapi.json").json()
    options = document["components"]["schemas"]["Job_echo"]["properties"]
    assert options["result_ttl"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 3600}
    assert options["failure_ttl"]["anyOf"][0]["maximum"] == 7200
    assert "a year" in options["run_at"]["description"]


@pytest.mark.parametrize(
    "run_at",
    [
        "9999-12-31T23:59:59-23:59",  # in RFC 3339, but answered as year 10000 before
        "2999-01-01T00:00:00+14:00",
        pytest.param((datetime.now(UTC) + timedelta(days=366)).isoformat(), id="366-days-ahead"),
    ],
)
def test_run_at_more_than_a_year_ahead_is_422(
    redis_url: str, queue_redis: redis.Redis, run_at: str
) -> None:
    with client_for(redis_url) as client:
        single = client.post("/jobs", json={"type": "noop", "run_at": run_at})
        batch = client.post("/jobs/batch", json={"jobs": [{"type": "noop", "run_at": run_at}]})
    assert errors_of(single) == [
        {
            "field": "run_at",
            "message": "Input should be at most a year (365 days) ahead, as delay is",
        }
    ]
    assert [e["field"] for e in errors_of(batch)] == ["jobs[0].run_at"]
    assert queue_redis.keys("rq:job:*") == []


def test_a_run_at_within_a_year_is_answered_in_rfc_3339(redis_url: str) -> None:
    ahead = datetime.now(UTC) + timedelta(days=364)
    far_west = ahead.astimezone(timezone(-timedelta(hours=23, minutes=59))).isoformat()
    with client_for(redis_url) as client:
        accepted = client.post("/jobs", json={"type": "noop", "run_at": far_west})
    assert accepted.status_code == 202
    assert RFC3339.fullmatch(accepted.json()["run_at"])
    answered = datetime.fromisoformat(accepted.json()["run_at"])
    assert abs((answered - ahead).total_seconds()) < 0.01


# --- At start-up: job types registered above a ceiling -----------------------------------------
def test_within_lowers_default_ttls_and_names_every_one_given_above_its_ceiling() -> None:
    def handler(payload: EmptyPayload, ctx: Any) -> None: ...

    table = Registry()
    table.job("plain")(handler)
    table.job("short", result_ttl=60)(handler)
    bounded = table.within(3600, 7200)
    assert [(t.name, t.result_ttl, t.failure_ttl) for t in bounded] == [
        ("plain", 3600, 7200),
        ("short", 60, 7200),
    ]
    assert table.get("plain").result_ttl == constants.RESULT_TTL  # the registry is unchanged

    table.job("long", result_ttl=MONTH, failure_ttl=2 * MONTH)(handler)
    with pytest.raises(TtlAboveCeiling) as caught:
        table.within(3600, 7200)
    assert caught.value.problems == [
        f"job type 'long': result_ttl={MONTH} is above MAX_RESULT_TTL=3600 (seconds)",
        f"job type 'long': failure_ttl={2 * MONTH} is above MAX_FAILURE_TTL=7200 (seconds)",
    ]


@pytest.mark.parametrize("worker_mode", ["false", "true"])
def test_a_job_type_above_its_ceiling_stops_the_service_before_binding(
    redis_url: str, worker_mode: str
) -> None:
    # Given a job type that keeps its results a month, and the default ceiling of a week
    port = free_port()
    env = base_env(
        redis_url,
        WORKER_MODE=worker_mode,
        PORT=str(port),
        HANDLER_MODULES="tests.retention_handlers",
    )
    # When the service starts, Then it refuses to, naming the type, its TTL and the setting
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == constants.EXIT_CONFIG
    problem = f"job type 'test.keep_long': result_ttl={MONTH} is above MAX_RESULT_TTL={7 * DAY}"
    assert problem in result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))


def test_a_job_type_within_a_raised_ceiling_starts(start_service: Start) -> None:
    api = start_service(HANDLER_MODULES="tests.retention_handlers", MAX_RESULT_TTL=str(MONTH))
    assert http("GET", f"{api.url}/ready")[0] == 200


# --- In the scripts: any job's TTL within 1..ceiling --------------------------------------------
def claimed(client: redis.Redis, max_retries: int = 0, **ttls: str | None) -> tuple[str, str]:
    """A job published, its TTL fields then written as another tool might (None: removed),
    and claimed by worker `w`: (id, started-registry member)."""
    job = records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, max_retries)
    publish_now(client, [job])
    for field, raw in ttls.items():
        if raw is None:
            client.hdel(constants.job_key(job.id), field)
        else:
            client.hset(constants.job_key(job.id), field, raw)
    (row,) = ClaimSync(client, "w", ["app-queue"])(1, score=int(time.time()) + 60, execution="b")
    return job.id, row.member


def complete(client: redis.Redis, job_id: str, member: str, outcome: str, now: float) -> bytes:
    error = records.encode_exc_string("boom")
    ending = Completion(
        Ending(outcome), job_id, "app-queue", member, error, now, now, 0, "exception"
    )
    (fate,) = CompleteSync(client, LIMITS, 3)("w", [ending], now)
    return fate.value.encode()


TTLS = [
    ("-1", "ceiling"),  # RQ's "kept forever"
    ("31536000", "ceiling"),  # a year
    ("0", 1),  # RQ's "not kept"
    ("50", 50),
    ("2.5", 2),
    ("soon", "ceiling"),  # not a number: the default, then its ceiling
    ("nan", "ceiling"),
    ("inf", "ceiling"),
    (None, "ceiling"),  # none: the default
]


@pytest.mark.parametrize(("raw", "kept"), TTLS)
def test_a_finished_job_is_kept_within_one_second_and_max_result_ttl(
    queue_redis: redis.Redis, raw: str | None, kept: int | str
) -> None:
    seconds = LIMITS.max_result_ttl if kept == "ceiling" else int(kept)
    job_id, member = claimed(queue_redis, result_ttl=raw)
    now = time.time()
    assert complete(queue_redis, job_id, member, "ok", now) == b"finished"
    score = queue_redis.zscore(constants.registry_key("finished", "app-queue"), job_id)
    assert score == pytest.approx(now + seconds, abs=0.001)
    for key in (constants.job_key(job_id), constants.result_key(job_id)):
        assert 0 < queue_redis.pttl(key) <= seconds * 1000 or seconds == 1


@pytest.mark.parametrize(("raw", "kept"), TTLS)
def test_a_dead_job_is_kept_within_one_second_and_max_failure_ttl(
    queue_redis: redis.Redis, raw: str | None, kept: int | str
) -> None:
    seconds = LIMITS.max_failure_ttl if kept == "ceiling" else int(kept)
    job_id, member = claimed(queue_redis, failure_ttl=raw)
    now = time.time()
    assert complete(queue_redis, job_id, member, "fail", now) == b"failed"
    score = queue_redis.zscore(constants.registry_key("failed", "app-queue"), job_id)
    assert score == pytest.approx(now + seconds, abs=0.001)
    for key in (constants.job_key(job_id), constants.result_key(job_id)):
        assert 0 < queue_redis.pttl(key) <= seconds * 1000 or seconds == 1


@pytest.mark.parametrize("raw", ["-1", "31536000"])
def test_recovery_and_cancel_keep_a_job_within_max_failure_ttl(
    queue_redis: redis.Redis, redis_url: str, raw: str
) -> None:
    # A job whose worker died once too often is failed by the supervisor's recovery
    lost, _ = claimed(queue_redis, failure_ttl=raw)
    recovered = housekeeping.recover(
        queue_redis, ["app-queue"], max_crashes=1, retention=LIMITS, owner="w", running=[lost]
    )
    assert (recovered.failed, recovered.redelivered, recovered.interrupted) == (1, 0, 0)
    # A queued job is canceled by the API
    queued = publish(redis_url, "noop")
    queue_redis.hset(constants.job_key(queued), "failure_ttl", raw)

    async def cancel() -> tuple[str, str]:
        client = redis.asyncio.Redis.from_url(f"{redis_url}/1")
        try:
            return await Store(client, retention=LIMITS).cancel(queued)
        finally:
            await client.aclose()

    assert asyncio.run(cancel()) == ("canceled", "canceled")
    for job_id in (lost, queued):
        assert 0 < queue_redis.pttl(constants.job_key(job_id)) <= LIMITS.max_failure_ttl * 1000
        assert 0 < queue_redis.pttl(constants.result_key(job_id)) <= LIMITS.max_failure_ttl * 1000


@pytest.mark.slow
def test_jobs_rq_enqueued_are_kept_no_longer_than_the_ceiling(
    start_service: Start, queue_redis: redis.Redis
) -> None:
    # Given jobs enqueued with RQ itself, one kept "forever" (-1), one for a year
    queue = Queue("app-queue", connection=queue_redis, serializer=JSONSerializer)
    forever = queue.enqueue("echo", {"n": 1}, result_ttl=-1)
    year = queue.enqueue("echo", {"n": 2}, result_ttl=365 * DAY)
    # When our worker runs them, with a ceiling of a minute
    start_service(worker=True, MAX_RESULT_TTL="60")

    def finished() -> bool:
        return all(
            queue_redis.hget(constants.job_key(job.id), "status") == b"finished"
            for job in (forever, year)
        )

    wait_for(finished, timeout=20)
    # Then each is kept a minute at most: not forever, not a year, and not dropped at once
    for job in (forever, year):
        assert 0 < queue_redis.ttl(constants.job_key(job.id)) <= 60
        assert 0 < queue_redis.ttl(constants.result_key(job.id)) <= 60


# --- The dead-letter queue's cap: DEAD_MAX_JOBS per RQ queue ------------------------------------
def dead_letter(
    client: redis.Redis, limits: Retention, now: float, queue: str = "app-queue"
) -> str:
    """One job published, claimed and failed for good on `queue` at `now`: its id."""
    job = records.NewJob(records.new_id(), "fail", queue, {}, 180, 0)
    publish_now(client, [job], now)
    (row,) = ClaimSync(client, "w", [queue])(1, score=int(now) + 60, execution="b", now=now)
    error = records.encode_exc_string("boom")
    ending = Completion(Ending.FAIL, job.id, queue, row.member, error, now, now, 0, "exception")
    assert CompleteSync(client, limits, 3)("w", [ending], now) == [Fate.FAILED]
    return job.id


def dead_ids(client: redis.Redis, queue: str = "app-queue") -> list[str]:
    return [m.decode() for m in client.zrange(constants.registry_key("failed", queue), 0, -1)]


def gone(client: redis.Redis, job_id: str) -> bool:
    return client.exists(constants.job_key(job_id), constants.result_key(job_id)) == 0


def trimmed(client: redis.Redis) -> int:
    return int(client.get(constants.DEAD_TRIMMED_KEY) or 0)


def test_past_dead_max_jobs_the_oldest_dead_jobs_go_and_are_counted(
    queue_redis: redis.Redis,
) -> None:
    limits = Retention(dead_max_jobs=3)
    start = time.time()
    # Given 5 jobs dead-lettered one after another, on a queue that keeps 3
    ids = [dead_letter(queue_redis, limits, start + n) for n in range(5)]
    # Then the 3 newest are kept, the 2 oldest are gone with their history, and counted
    assert dead_ids(queue_redis) == ids[2:]
    assert all(gone(queue_redis, job_id) for job_id in ids[:2])
    assert not any(gone(queue_redis, job_id) for job_id in ids[2:])
    assert trimmed(queue_redis) == 2
    # Each RQ queue has its own cap: another priority's dead jobs trim nothing here
    high = [dead_letter(queue_redis, limits, start + 10 + n, "app-queue.high") for n in range(3)]
    assert dead_ids(queue_redis, "app-queue.high") == high
    assert dead_ids(queue_redis) == ids[2:] and trimmed(queue_redis) == 2


def test_the_job_being_dead_lettered_is_never_the_one_trimmed(queue_redis: redis.Redis) -> None:
    limits = Retention(dead_max_jobs=2)
    start = time.time()
    kept = [dead_letter(queue_redis, limits, start + n) for n in range(2)]
    # Given a job that expires sooner than those already dead (a shorter failure_ttl)
    job = records.NewJob(records.new_id(), "fail", "app-queue", {}, 180, 0, failure_ttl=60)
    publish_now(queue_redis, [job], start + 2)
    claim = ClaimSync(queue_redis, "w", ["app-queue"])
    (row,) = claim(1, score=int(start) + 60, execution="b", now=start)
    error = records.encode_exc_string("boom")
    ending = Completion(Ending.FAIL, job.id, "app-queue", row.member, error, reason="exception")
    CompleteSync(queue_redis, limits, 3)("w", [ending], start + 2)
    # Then it stays, and the soonest to expire of the others makes room
    assert set(dead_ids(queue_redis)) == {job.id, kept[1]}
    assert gone(queue_redis, kept[0]) and trimmed(queue_redis) == 1


def test_expired_and_stale_entries_are_removed_but_not_counted(queue_redis: redis.Redis) -> None:
    limits = Retention(dead_max_jobs=3)
    start = time.time()
    ids = [dead_letter(queue_redis, limits, start + n) for n in range(2)]
    registry_key = constants.registry_key("failed", "app-queue")
    # Given an entry already expired whose job hash is still there (persisted by hand), and an
    # entry whose job is gone (expired with its TTL, or deleted by another tool)
    expired = dead_letter(queue_redis, Retention(), start - 1000)
    queue_redis.persist(constants.job_key(expired))
    queue_redis.zadd(registry_key, {expired: start - 10})
    queue_redis.zadd(registry_key, {"f" * 32: start + 100})
    # When one more job is dead-lettered
    newest = dead_letter(queue_redis, limits, start + 5)
    # Then the expired entry goes with its job; the stale one makes room; neither is counted
    assert dead_ids(queue_redis) == [*ids, newest]
    assert gone(queue_redis, expired) and trimmed(queue_redis) == 0


@pytest.mark.slow
def test_trimmed_dead_jobs_show_in_metrics_and_status(
    start_service: Start,
    redis_url: str,
    queue_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a worker that keeps 2 dead jobs per queue
    common = {"DEAD_MAX_JOBS": "2", "WORKER_PROCESSING_INTERVAL": "1000"}
    worker = start_service(worker=True, **common)
    api = start_service(**common)
    # When 4 jobs fail for good
    for n in range(4):
        status_code, _, _ = http("POST", f"{api.url}/jobs", {"type": "fail", "payload": {}})
        assert status_code == 202, n
    wait_for(lambda: trimmed(queue_redis) == 2, timeout=20)
    # Then 2 are left, 2 trimmed: as GET /dead, /metrics on both processes and status say
    assert len(dead_ids(queue_redis)) == 2
    assert len(http("GET", f"{api.url}/dead")[2]["jobs"]) == 2
    for process in (api, worker):
        wait_for(lambda url=process.url: "service_dead_trimmed_jobs_total 2.0" in scrape(url))
    settings = load(base_env(redis_url, DEAD_MAX_JOBS="2"))
    assert status.main(settings, []) == 0
    text = capsys.readouterr().out
    assert (
        "DEAD LETTERS: 2 trimmed, oldest first, to keep each queue within DEAD_MAX_JOBS (2)" in text
    )
    assert status.main(settings, ["--json"]) == 0
    assert '"dead_trimmed": 2' in capsys.readouterr().out


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())
