"""DURABILITY=replicated in the worker: CLAIM and COMPLETE are each followed by WAIT on the same
connection; a shortfall is logged and the outcome stays recorded (a replay would record
nothing: the claim is gone)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.jobs.states import Ending, Fate
from service.store.claim import Claim
from service.store.complete import Complete, Completion
from service.store.publish import publish_now
from tests.conftest import wait_for
from tests.redis_ha import Node, plain_node
from tests.store.conftest import MAX_CRASHES, QUEUE, new_job


@pytest.fixture
def primary() -> Iterator[Node]:
    node = plain_node().start()
    yield node
    node.stop()


def claim_and_finish(port: int, replicas: tuple[int, int]) -> tuple[str, list[Fate]]:
    async def run() -> tuple[str, list[Fate]]:
        client = aioredis.Redis(port=port, db=1)
        try:
            (claimed,) = await Claim(client, "w", [QUEUE], replicas)(
                1, score=time.time() + 60, execution="e"
            )
            ok = Completion(
                Ending.OK, claimed.id, claimed.queue, claimed.member, b"", time.time(), time.time()
            )
            complete = Complete(client, DEFAULT_RETENTION, MAX_CRASHES, replicas)
            return claimed.id, await complete("w", [ok], time.time())
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_with_a_replica_the_outcome_is_on_it_when_complete_returns(primary: Node) -> None:
    replica = plain_node("--replicaof", "127.0.0.1", str(primary.port)).start()
    try:
        link = redis.Redis(port=replica.port, db=1)
        wait_for(lambda: link.info("replication")["master_link_status"] == "up")
        publish_now(redis.Redis(port=primary.port, db=1), [new_job()])
        job_id, fates = claim_and_finish(primary.port, (1, 1000))
        assert fates == [Fate.FINISHED]
        assert link.hget(constants.job_key(job_id), "status") == b"finished"  # no polling
        link.close()
    finally:
        replica.stop()


def test_a_shortfall_is_logged_and_the_outcome_kept(
    primary: Node, caplog: pytest.LogCaptureFixture
) -> None:
    queue = redis.Redis(port=primary.port, db=1)
    publish_now(queue, [new_job()])
    with caplog.at_level(logging.WARNING):
        job_id, fates = claim_and_finish(primary.port, (1, 50))  # no replica at all
    assert fates == [Fate.FINISHED]
    assert queue.hget(constants.job_key(job_id), "status") == b"finished"
    assert "1 jobs claimed, confirmed by 0 of the 1 replicas" in caplog.text
    assert "1 outcomes recorded on the primary, confirmed by 0 of the 1" in caplog.text
    queue.close()
