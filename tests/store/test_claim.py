"""CLAIM: queued jobs taken in drain order, held in the started registries."""

from __future__ import annotations

from collections.abc import Callable

import redis

from service.config import constants
from tests.store.conftest import QUEUE


def test_a_claim_takes_a_batch_in_queue_order_and_holds_it(
    queue_redis: redis.Redis, published: Callable, claim: Callable
) -> None:
    jobs = published(5)
    taken = claim(3)
    assert [c.id for c in taken] == [job.id for job in jobs[:3]]
    first = taken[0]
    assert (first.queue, first.attempt, first.timeout, first.crashes) == (QUEUE, 1, 180.0, 0)
    assert first.member.startswith(f"{first.id}:x")
    assert len({c.member for c in taken}) == 3  # an execution id each
    assert queue_redis.zscore(constants.registry_key("started", QUEUE), first.member)
    fields = queue_redis.hmget(constants.job_key(first.id), "status", "worker_name", "attempts")
    assert fields == [b"started", b"w", b"1"]
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 2
    # Replayed, a claim takes the jobs still waiting, never one already held
    assert [c.id for c in claim(10)] == [job.id for job in jobs[3:]]
    assert claim(10) == []


def test_higher_priorities_drain_first(published: Callable, claim: Callable) -> None:
    low = published(1, f"{QUEUE}.low")
    default = published(1, QUEUE)
    high = published(1, f"{QUEUE}.high")
    order = (f"{QUEUE}.high", QUEUE, f"{QUEUE}.low")
    assert [c.id for c in claim(2, order)] == [high[0].id, default[0].id]
    assert [c.id for c in claim(2, order)] == [low[0].id]


def test_a_claim_carries_the_crash_count_and_skips_jobs_no_longer_queued(
    queue_redis: redis.Redis, published: Callable, claim: Callable
) -> None:
    crashed, canceled, plain = published(3)
    queue_redis.hset(constants.job_key(crashed.id), "crashes", 2)
    queue_redis.hset(constants.job_key(canceled.id), "status", "canceled")
    taken = claim(10)
    assert [(c.id, c.crashes) for c in taken] == [(crashed.id, 2), (plain.id, 0)]
