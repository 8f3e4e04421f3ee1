"""depends_on over HTTP: references within a batch, cycles and unknown ids refused whole (422),
the job's view (depends_on, deferred, why a dependent was canceled)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from service.config import constants
from tests.conftest import make_client


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


def jobs_in(queue_redis: redis.Redis) -> list[bytes]:
    return queue_redis.keys(constants.job_key("*"))


def error(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()["error"]
    return body


def test_a_job_waits_for_its_parent(client: TestClient, queue_redis: redis.Redis) -> None:
    parent = client.post("/jobs", json={"type": "noop"}).json()["id"]
    response = client.post("/jobs", json={"type": "noop", "depends_on": [parent, parent]})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "deferred" and body["depends_on"] == [parent]
    view = client.get(f"/jobs/{body['id']}").json()
    assert view["status"] == "deferred" and view["depends_on"] == [parent]
    assert view["allow_failure"] is False and view["reason"] is None
    assert queue_redis.lrange(constants.queue_key("app-queue"), 0, -1) == [parent.encode()]


def test_unknown_parents_are_422_and_nothing_is_enqueued(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    missing = "0" * 32
    for path, body in [
        ("/jobs", {"type": "noop", "depends_on": [missing]}),
        ("/jobs", {"type": "noop", "depends_on": [missing], "idempotency_key": "k-1"}),
        ("/jobs/batch", {"jobs": [{"type": "noop"}, {"type": "noop", "depends_on": [missing]}]}),
    ]:
        problem = error(client.post(path, json=body))
        assert problem["code"] == "unknown_dependency" and problem["details"]["ids"] == [missing]
        assert missing in problem["message"]
    assert jobs_in(queue_redis) == []
    assert queue_redis.keys(constants.idempotency_key("*")) == []


def test_a_batch_names_its_own_items_and_is_published_parents_first(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    # The child comes first in the batch and names the items after it.
    batch = {
        "jobs": [
            {"type": "noop", "depends_on": ["$1", "$2"]},
            {"type": "noop"},
            {"type": "noop", "depends_on": ["$1"], "allow_failure": True},
        ]
    }
    response = client.post("/jobs/batch", json=batch)
    assert response.status_code == 202, response.text
    child, first, second = response.json()["jobs"]
    assert child["depends_on"] == [first["id"], second["id"]]
    assert second["depends_on"] == [first["id"]]
    assert [child["status"], first["status"], second["status"]] == [
        "deferred",
        "queued",
        "deferred",
    ]
    view = client.get(f"/jobs/{second['id']}").json()
    assert view["status"] == "deferred" and view["allow_failure"] is True
    queued = queue_redis.lrange(constants.queue_key("app-queue"), 0, -1)
    assert queued == [first["id"].encode()]


@pytest.mark.parametrize(
    ("items", "cycle"),
    [
        ([{"depends_on": ["$1"]}, {"depends_on": ["$0"]}], [0, 1]),
        ([{}, {"depends_on": ["$2"]}, {"depends_on": ["$3"]}, {"depends_on": ["$1"]}], [1, 2, 3]),
    ],
)
def test_a_cycle_in_a_batch_is_422(
    client: TestClient, queue_redis: redis.Redis, items: list[dict[str, Any]], cycle: list[int]
) -> None:
    batch = {"jobs": [{"type": "noop", **item} for item in items]}
    problem = error(client.post("/jobs/batch", json=batch))
    assert problem["code"] == "dependency_cycle"
    assert sorted(problem["details"]["jobs"]) == cycle
    assert jobs_in(queue_redis) == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", {"type": "noop", "depends_on": ["$0"]}, "depends_on.0"),
        ("/jobs/batch", {"jobs": [{"type": "noop", "depends_on": ["$0"]}]}, "jobs[0].depends_on.0"),
        ("/jobs/batch", {"jobs": [{"type": "noop", "depends_on": ["$7"]}]}, "jobs[0].depends_on.0"),
        ("/jobs", {"type": "noop", "depends_on": ["no/such"]}, "depends_on.0"),
        ("/jobs", {"type": "noop", "depends_on": []}, "depends_on"),
        ("/jobs", {"type": "noop", "allow_failure": 1}, "allow_failure"),
    ],
)
def test_bad_references_are_422_naming_the_field(
    client: TestClient, queue_redis: redis.Redis, path: str, body: Any, field: str
) -> None:
    problem = error(client.post(path, json=body))
    assert problem["code"] == "invalid_job"
    assert field in [e["field"] for e in problem["details"]["errors"]]
    assert jobs_in(queue_redis) == []


def test_too_many_parents_are_422(client: TestClient) -> None:
    parents = ["a" * 32] * (constants.MAX_DEPENDENCIES + 1)
    problem = error(client.post("/jobs", json={"type": "noop", "depends_on": parents}))
    assert problem["details"]["errors"][0]["field"] == "depends_on"


def test_a_dependent_of_a_canceled_parent_says_why(client: TestClient) -> None:
    parent = client.post("/jobs", json={"type": "noop"}).json()["id"]
    dependent = client.post("/jobs", json={"type": "noop", "depends_on": [parent]}).json()["id"]
    assert client.post(f"/jobs/{dependent}/cancel").json()["status"] == "canceled"
    again = client.post("/jobs", json={"type": "noop", "depends_on": [dependent]}).json()["id"]
    view = client.get(f"/jobs/{again}").json()
    assert view["status"] == "canceled"
    assert view["reason"] == "dependency_canceled" and view["dependency"] == dependent


def test_the_202_says_what_the_publish_made_of_a_job_with_parents(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    # Given a parent that finished, one that failed for good and one still waiting
    done, dead, waiting = (client.post("/jobs", json={"type": "noop"}).json()["id"] for _ in "123")
    queue_redis.hset(constants.job_key(done), "status", "finished")
    queue_redis.hset(constants.job_key(dead), "status", "failed")

    def status_of(body: dict[str, Any], path: str = "/jobs") -> str:
        response = client.post(path, json=body)
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return str(answer["status"])

    # Then each answer says the state the job has, as GET does
    assert status_of({"type": "noop", "depends_on": [done]}) == "queued"
    assert status_of({"type": "noop", "depends_on": [dead]}) == "canceled"
    assert status_of({"type": "noop", "depends_on": [dead], "allow_failure": True}) == "queued"
    assert status_of({"type": "noop", "depends_on": [waiting]}) == "deferred"
    assert status_of({"type": "noop", "depends_on": [done], "delay": 60}) == "scheduled"
    # and so does each item of a batch
    batch = [
        {"type": "noop", "depends_on": [done]},
        {"type": "noop", "depends_on": [dead]},
        {"type": "noop", "depends_on": ["$0"]},
        {"type": "noop"},
    ]
    answers = client.post("/jobs/batch", json={"jobs": batch}).json()["jobs"]
    assert [a["status"] for a in answers] == ["queued", "canceled", "deferred", "queued"]
    for answer in answers:
        assert client.get(f"/jobs/{answer['id']}").json()["status"] == answer["status"]
