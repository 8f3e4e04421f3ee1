"""POST /jobs's fast path (service/api/fastpath.py): it serves plain submissions itself, hands
everything else to the full stack, and answers exactly as the full stack does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from service.api.app import create_app
from service.api.fastpath import FastSubmit
from service.config.settings import load
from service.jobs import registry
from tests.conftest import TEST_MODULES

KEY = "fast-path-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json", **AUTH}
ENV = {"API_KEYS": KEY, "MAX_BODY_BYTES": "4096"}


def make_app(redis_url: str) -> FastSubmit:
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0", **ENV})
    app = create_app(settings, registry.load(TEST_MODULES))
    assert isinstance(app, FastSubmit)
    return app


@pytest.fixture
def fast_only(redis_url: str) -> Iterator[TestClient]:
    """The fast path with the full stack replaced by a stub that answers 599 (the app's
    start-up still runs, for the Redis client the fast path uses)."""
    app = make_app(redis_url)

    async def full_stack_stub(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await app.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.full = full_stack_stub
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_plain_submissions_are_served_without_the_full_stack(
    fast_only: TestClient, queue_redis: redis.Redis
) -> None:
    response = fast_only.post("/jobs", json={"type": "noop"}, headers=AUTH)
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert queue_redis.lrange("rq:queue:app-queue", 0, -1) == [job_id.encode()]
    with_options = {"type": "noop", "payload": {}, "priority": "high", "max_retries": 3}
    assert fast_only.post("/jobs", json=with_options, headers=AUTH).status_code == 202


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"type": "noop"}', {**JSON, "Idempotency-Key": "k1"}),
        (b'{"type": "noop", "idempotency_key": "k1"}', JSON),
        (b'{"type": "noop"}', {**JSON, "Authorization": "Bearer wrong"}),
        (b'{"type": "noop"}', {"content-type": "text/plain", **AUTH}),
        (b'{"type": "nope"}', JSON),
        (b'{"type": "noop", "payload": {"x": 1}}', JSON),
        (b'{"type": ', JSON),
        (b"[]", JSON),
        (b'{"type": "noop", "payload": "' + b"x" * 5000 + b'"}', JSON),
        (b'{"type": "echo", "payload": {"n": 18446744073709551615}}', JSON),
        (b'{"type": "echo", "payload": {"n": 123456789012345678901234567890}}', JSON),
        (b'{"type": "echo", "payload": {"n": -9223372036854775809}}', JSON),
    ],
    ids=[
        "idempotency-header",
        "idempotency-field",
        "bad-key",
        "not-json",
        "unknown-type",
        "bad-payload",
        "malformed",
        "not-an-object",
        "too-large",
        "uint64",
        "beyond-uint64",
        "below-int64",
    ],
)
def test_everything_else_goes_to_the_full_stack(
    fast_only: TestClient, queue_redis: redis.Redis, body: bytes, headers: dict[str, str]
) -> None:
    assert fast_only.post("/jobs", content=body, headers=headers).status_code == 599
    assert queue_redis.keys("rq:job:*") == []


def comparable(response: Any) -> tuple[int, Any, str | None]:
    """Status, body and Location with the job id and the time taken out."""
    text = re.sub(r"[0-9a-f]{32}", "<id>", response.text)
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<time>", text)
    location = response.headers.get("location")
    return response.status_code, text, location and re.sub(r"[0-9a-f]{32}", "<id>", location)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "noop"}',
        b'{"type": "echo", "payload": {"a": [1, 2]}}',
        b'{"type": "noop", "priority": "low", "delay": 60}',
        b'{"type": "nope"}',
        b'{"type": "noop", "payload": {"x": 1}}',
        b'{"type": "test.count", "payload": {"key": 5}}',
        b'{"type": ',
        b'{"type": "noop", "payload": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"type": "echo", "payload": {"n": 18446744073709551615}}',
        b'{"type": "echo", "payload": {"n": 123456789012345678901234567890}}',
        b'{"type": "echo", "payload": {"n": -9223372036854775809, "id": "12345678901234567890"}}',
        b'{"type": "echo", "payload": {"id": "12345678901234567890"}}',
    ],
)
def test_the_fast_path_answers_as_the_full_stack(
    redis_url: str, queue_redis: redis.Redis, body: bytes
) -> None:
    fast = make_app(redis_url)
    full = make_app(redis_url).full
    with TestClient(fast) as fast_client, TestClient(full) as full_client:
        a = comparable(fast_client.post("/jobs", content=body, headers=JSON))
        b = comparable(full_client.post("/jobs", content=body, headers=JSON))
    assert a == b
    jobs = queue_redis.keys("rq:job:*")
    assert len(jobs) == (2 if a[0] == 202 else 0)  # one job from each, or none
