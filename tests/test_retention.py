"""Retention limits: how long an ended job is kept (MAX_RESULT_TTL, MAX_FAILURE_TTL, and run_at
no farther ahead than a year) and how many dead jobs a queue keeps (DEAD_MAX_JOBS), at the API's
edge, at start-up, and inside the scripts that end a job, whoever wrote it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import redis.asyncio
from starlette.testclient import TestClient

from service import constants, registry
from service.api.app import create_app
from service.embedded_redis import free_port
from service.registry import EmptyPayload, Registry, TtlAboveCeiling
from service.settings import Retention, load

from . import sample_handlers  # noqa: F401 - registers the test job types
from .conftest import ROOT, ServiceProcess, base_env, http

Start = Callable[..., ServiceProcess]
DAY = 24 * 3600
MONTH = 30 * DAY
LIMITS = Retention(max_result_ttl=100, max_failure_ttl=200, dead_max_jobs=1000)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def client_for(redis_url: str, **env: str) -> TestClient:
    """The API on the test's Redis, its job types within the settings' ceilings (as at start)."""
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0", **env})
    handlers = registry.load().within(settings.max_result_ttl, settings.max_failure_ttl)
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
