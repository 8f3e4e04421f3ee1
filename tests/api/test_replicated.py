"""DURABILITY=replicated: a publish is answered once a replica confirms it (WAIT on the same
connection), 503 not_replicated otherwise; a retry with the same Idempotency-Key is safe."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from service.config import constants
from tests.conftest import make_client, wait_for
from tests.redis_ha import Node, plain_node


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[Node, Node]]:
    primary = plain_node().start()
    replica = plain_node("--replicaof", "127.0.0.1", str(primary.port)).start()
    link = redis.Redis(port=replica.port)
    wait_for(lambda: link.info("replication")["master_link_status"] == "up")
    link.close()
    yield primary, replica
    replica.stop()
    primary.stop()


def test_a_publish_is_answered_once_a_replica_has_it(
    primary_and_replica: tuple[Node, Node],
) -> None:
    primary, replica = primary_and_replica
    on_replica = redis.Redis(port=replica.port, db=1)
    with make_client(f"redis://127.0.0.1:{primary.port}", DURABILITY="replicated") as client:
        for n in range(20):
            response = client.post(
                "/jobs", json={"type": "noop"}, headers={"Idempotency-Key": f"k{n}"}
            )
            assert response.status_code == 202, response.text
            # WAIT returned: the replica has the job already, no polling needed
            assert on_replica.exists(constants.job_key(response.json()["id"]))
        response = client.post("/jobs", json={"type": "noop"})  # coalesced single jobs too
        assert on_replica.exists(constants.job_key(response.json()["id"]))
    on_replica.close()


def test_a_shortfall_is_503_not_replicated_and_a_retry_is_safe(
    primary_and_replica: tuple[Node, Node],
) -> None:
    primary, replica = primary_and_replica
    assert replica.process is not None
    on_primary = redis.Redis(port=primary.port, db=1)
    on_replica = redis.Redis(port=replica.port, db=1)
    env = {"DURABILITY": "replicated", "REDIS_REPLICA_TIMEOUT": "200"}
    with make_client(f"redis://127.0.0.1:{primary.port}", **env) as client:
        headers = {"Idempotency-Key": "order-7"}
        # Given a replica that does not answer
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            # When a job is published, Then the answer says it was written but not replicated
            response = client.post("/jobs", json={"type": "noop"}, headers=headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "not_replicated"
            assert "Retry-After" in response.headers
            # And it is on the primary: written once
            assert on_primary.llen(f"{constants.KEY_PREFIX}queue:app-queue") == 1
            # A retry while the replica still lags is refused the same way
            again = client.post("/jobs", json={"type": "noop"}, headers=headers)
            assert again.json()["error"]["code"] == "not_replicated"
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        # When the client retries with the same key once the replica is back
        retried = client.post("/jobs", json={"type": "noop"}, headers=headers)
        # Then it is the same job, one job, and the replica has it
        assert retried.status_code in (200, 202), retried.text
        job_id = retried.json()["id"]
        assert on_primary.llen(f"{constants.KEY_PREFIX}queue:app-queue") == 1
        assert on_replica.exists(constants.job_key(job_id))
    on_primary.close()
    on_replica.close()
