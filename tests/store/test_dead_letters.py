"""DEAD_RETRY and DEAD_DELETE: a dead job redriven onto its queue as new, or deleted; either
replayed does nothing more."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from service.config import constants
from service.jobs import records
from service.jobs.states import Ending, Fate
from service.store.complete import CompleteSync, Completion
from service.store.dead_letters import DeadLetters, Deleted, Retried
from tests.store.conftest import QUEUE


def dead(published: Callable, claim: Callable, complete: CompleteSync, count: int) -> list[str]:
    published(count, retries=2)
    error = records.encode_exc_string("boom")
    endings = [Completion(Ending.REJECT, c.id, QUEUE, c.member, error) for c in claim()]
    assert complete("w", endings, time.time()) == [Fate.FAILED] * count
    return [ending.id for ending in endings]


def test_a_dead_job_is_retried_as_new_and_a_replay_does_nothing(
    queue_redis: redis.Redis,
    published: Callable,
    claim: Callable,
    complete: CompleteSync,
    on_client: Callable,
) -> None:
    (job_id,) = dead(published, claim, complete, 1)

    def retry(client: aioredis.Redis) -> Awaitable[Retried]:
        return DeadLetters(client).retry([job_id])

    assert on_client(retry) == Retried({job_id: QUEUE})
    fields = queue_redis.hmget(constants.job_key(job_id), "status", "retries_left", "crashes")
    assert fields == [b"queued", b"2", b"0"]
    assert queue_redis.zcard(constants.registry_key("failed", QUEUE)) == 0
    assert on_client(retry) == Retried({})  # the replay: no longer dead
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 1


def test_a_dead_job_is_deleted_and_a_replay_deletes_nothing(
    queue_redis: redis.Redis,
    published: Callable,
    claim: Callable,
    complete: CompleteSync,
    on_client: Callable,
) -> None:
    ids = dead(published, claim, complete, 2)

    def delete(client: aioredis.Redis) -> Awaitable[Deleted]:
        return DeadLetters(client).delete(ids)

    assert on_client(delete) == Deleted(2)
    assert not queue_redis.exists(*(constants.job_key(i) for i in ids))
    assert on_client(delete) == Deleted(0)  # the replay
