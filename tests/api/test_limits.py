"""GET /limits, GET/PUT/DELETE /limits/{job_type}: the code's limits shown, an override set
(validated, every bad field named) and dropped, read by the claim at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from starlette.testclient import TestClient

from service.config import constants
from service.jobs.limit import Limit
from service.store.claim import ClaimSync
from tests.conftest import TEST_MODULES


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    from service.api.app import create_app
    from service.config.settings import load
    from service.jobs import registry

    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0"})
    types = registry.load((*TEST_MODULES, "tests.limit_handlers"))
    with TestClient(create_app(settings, types), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_code_limits_are_listed_with_where_they_stand(client: TestClient) -> None:
    listing = client.get("/limits")
    assert listing.status_code == 200
    by_type = {one["type"]: one for one in listing.json()["limits"]}
    assert set(by_type) == {"limits.two", "limits.rated"}
    assert by_type["limits.two"] == {
        "type": "limits.two",
        "rate_limit": None,
        "concurrency_limit": 2,
        "limit_key": "tenant",
        "source": "code",
        "code": {"rate_limit": None, "concurrency_limit": 2, "limit_key": "tenant"},
        "running": 0,
        "held": 0,
        "keys": 0,
    }
    assert client.get("/limits/noop").json()["source"] is None
    missing = client.get("/limits/no.such")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_job_type"


def test_an_override_applies_at_the_next_claim_until_deleted(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    # Given 3 noop jobs and an override of noop's limits to one at a time
    put = client.put("/limits/noop", json={"concurrency_limit": 1, "rate_limit": "100/minute"})
    assert put.status_code == 200
    assert put.json()["source"] == "api"
    assert (put.json()["concurrency_limit"], put.json()["rate_limit"]) == (1, "100/minute")
    stored = queue_redis.hget(constants.limit_config_key("noop"), "override")
    assert stored is not None and Limit.decode(stored) == Limit.of("100/minute", 1, None)
    for _ in range(3):
        assert client.post("/jobs", json={"type": "noop"}).status_code == 202
    # When a worker claims, only one starts, the others are held
    claim = ClaimSync(queue_redis, "w", ["app-queue"])
    assert len(claim(10, score=2**31, execution="x")) == 1
    shown = client.get("/limits/noop").json()
    assert (shown["running"], shown["held"], shown["keys"]) == (1, 2, 1)
    # When the override is deleted, noop has no limit again: the next claim takes what comes
    deleted = client.delete("/limits/noop")
    assert deleted.status_code == 200 and deleted.json()["source"] is None
    assert queue_redis.sismember(constants.LIMITED_KEY, "noop") == 0
    assert client.post("/jobs", json={"type": "noop"}).status_code == 202
    assert len(claim(10, score=2**31, execution="y")) == 1


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            {"rate_limit": "20/fortnight", "concurrency_limit": 0},
            {"rate_limit", "concurrency_limit"},
        ),
        ({"limit_key": "tenant"}, {""}),
        ({}, {""}),
        ({"concurrency_limit": 2, "limit_key": "a.b", "extra": 1}, {"limit_key", "extra"}),
        ({"concurrency_limit": True}, {"concurrency_limit"}),
        ([1], {""}),
    ],
)
def test_a_bad_override_is_refused_whole_naming_each_field(
    client: TestClient, queue_redis: redis.Redis, body: object, fields: set[str]
) -> None:
    response = client.put("/limits/limits.two", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_limit"
    assert {e["field"] for e in error["details"]["errors"]} == fields
    assert queue_redis.hget(constants.limit_config_key("limits.two"), "override") is None
