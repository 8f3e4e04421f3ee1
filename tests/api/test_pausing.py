"""POST /queues/{name}/pause and /resume: the state in Redis, idempotent answers, the names
refused, and GET /queues showing it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from starlette.testclient import TestClient

from service.config import constants
from tests.conftest import make_client

PRIORITIES = ("app-queue.high", "app-queue", "app-queue.low")


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


def paused_in_listing(client: TestClient) -> dict[str, bool]:
    return {q["name"]: q["paused"] for q in client.get("/queues").json()["queues"]}


def test_pause_keeps_accepting_jobs_and_resume_undoes_it_each_idempotent(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    # When a queue is paused, twice
    for _ in range(2):
        response = client.post("/queues/app-queue/pause")
        assert response.status_code == 200
        assert response.json() == {"queue": "app-queue", "paused": True}
    # Then its three priorities are paused in Redis, and listed so
    assert queue_redis.smembers(constants.PAUSED_KEY) == {q.encode() for q in PRIORITIES}
    listing = paused_in_listing(client)
    assert all(listing[q] for q in PRIORITIES)
    assert not any(listing[q] for q in ("reports.high", "reports", "reports.low"))
    # And jobs are still accepted, waiting
    assert client.post("/jobs", json={"type": "noop", "priority": "high"}).status_code == 202
    assert queue_redis.llen(constants.queue_key("app-queue.high")) == 1
    # When it is resumed, twice, it is no longer paused
    for _ in range(2):
        response = client.post("/queues/app-queue/resume")
        assert response.status_code == 200
        assert response.json() == {"queue": "app-queue", "paused": False}
    assert queue_redis.exists(constants.PAUSED_KEY) == 0
    assert not any(paused_in_listing(client).values())


def test_any_valid_name_may_be_paused_and_is_then_listed(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    assert client.post("/queues/not-yet.used_1/pause").json()["paused"] is True
    listing = paused_in_listing(client)
    assert [listing[q] for q in ("not-yet.used_1.high", "not-yet.used_1")] == [True, True]
    assert client.post("/queues/never-paused/resume").json() == {
        "queue": "never-paused",
        "paused": False,
    }
    assert "never-paused" not in paused_in_listing(client)


@pytest.mark.parametrize(
    "name", ["app-queue.high", "app-queue.low", "a%20b", "caf%C3%A9", "a:b", "%2E%2E", "%2E"]
)
def test_a_name_that_is_no_queue_is_a_422_and_changes_nothing(
    client: TestClient, queue_redis: redis.Redis, name: str
) -> None:
    for action in ("pause", "resume"):
        response = client.post(f"/queues/{name}/{action}")
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error"]["code"] == "invalid_queue"
    assert queue_redis.exists(constants.PAUSED_KEY) == 0


def test_only_post_and_only_with_a_key_when_keys_are_set(redis_url: str) -> None:
    with make_client(redis_url, API_KEYS="key-one") as client:
        response = client.post("/queues/app-queue/pause")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        auth = {"Authorization": "Bearer key-one"}
        assert client.post("/queues/app-queue/pause", headers=auth).status_code == 200
        response = client.get("/queues/app-queue/pause", headers=auth)
        assert response.status_code == 405 and response.headers["allow"] == "POST"
        document = client.get("/openapi.json", headers=auth).json()
        for path in ("/queues/{name}/pause", "/queues/{name}/resume"):
            operation = document["paths"][path]["post"]
            assert set(operation["responses"]) == {"200", "401", "403", "422", "503"}
            assert "read_only_key" in operation["responses"]["403"]["description"]
            assert operation["security"] == [{"bearer": []}]
