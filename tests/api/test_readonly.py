"""A demoted primary (now a replica) answers writes with READONLY: the API drops that
connection and answers 503 queue_unavailable (retry later), never a 500; the worker treats it
as passing trouble, not a job failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from service.worker.trouble import passing
from tests.conftest import make_client
from tests.redis_ha import Node, plain_node


@pytest.fixture
def two_nodes() -> Iterator[tuple[Node, Node]]:
    first, second = plain_node().start(), plain_node().start()
    yield first, second
    second.stop()
    first.stop()


def test_readonly_is_a_reconnect_not_a_failure(two_nodes: tuple[Node, Node]) -> None:
    primary, other = two_nodes
    admin = redis.Redis(port=primary.port)
    with make_client(f"redis://127.0.0.1:{primary.port}") as client:
        assert client.post("/jobs", json={"type": "noop"}).status_code == 202
        # Given the primary demoted: a replica of another server
        admin.replicaof("127.0.0.1", other.port)
        # When a job is published, Then 503 queue_unavailable, not a 500
        response = client.post("/jobs", json={"type": "noop"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "queue_unavailable"
        # And once it is a primary again, the next publish goes through
        admin.replicaof("NO", "ONE")
        assert client.post("/jobs", json={"type": "noop"}).status_code == 202
    admin.close()


def test_the_worker_waits_out_readonly() -> None:
    assert passing(redis.ReadOnlyError("You can't write against a read only replica."))
