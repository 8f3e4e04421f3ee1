"""PUBLISH, PUBLISH_EACH and PUBLISH_ONCE: jobs written as RQ's enqueue writes them, MAX_BACKLOG
refusals that write nothing, and an idempotency key replayed."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from service.config import constants
from service.store.publish import Once, Publish, PublishEach, PublishOnce, Refused
from tests.store.conftest import QUEUE, new_job


def test_a_job_is_queued_with_a_wake_up_token_or_scheduled(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    now, job, later = time.time(), new_job(), new_job(run_at=time.time() + 60)
    assert on_direct(lambda direct: Publish()(direct, [job, later], now, "", 0)) is None
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [job.id.encode()]
    assert queue_redis.llen(constants.wake_key(QUEUE)) == 1
    assert queue_redis.smembers(constants.QUEUES_KEY) == {constants.queue_key(QUEUE).encode()}
    assert queue_redis.hget(constants.job_key(job.id), "status") == b"queued"
    assert queue_redis.hget(constants.job_key(later.id), "status") == b"scheduled"
    assert queue_redis.zscore(constants.registry_key("scheduled", QUEUE), later.id)


def test_max_backlog_refuses_a_whole_batch_and_writes_nothing(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    now = time.time()
    publish = Publish()
    assert on_direct(lambda direct: publish(direct, [new_job(), new_job()], now, "", 3)) is None
    refused = on_direct(lambda direct: publish(direct, [new_job(), new_job()], now, "", 3))
    assert refused == Refused(QUEUE, 2)
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 2
    assert queue_redis.dbsize() == 5  # 2 jobs, the queue, its wake-up tokens, the queue set
    # another priority of the same queue counts against the same backlog
    high = [new_job(f"{QUEUE}.high")]
    assert on_direct(lambda direct: publish(direct, high, now, "", 3)) is None
    assert on_direct(lambda direct: publish(direct, high, now, "", 3)) == Refused(QUEUE, 3)


def test_single_jobs_sent_together_are_admitted_one_by_one(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    jobs = [new_job() for _ in range(3)]
    replies = on_direct(lambda direct: PublishEach()(direct, jobs, time.time(), 2))
    assert replies == [None, None, Refused(QUEUE, 2)]
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [
        jobs[0].id.encode(),
        jobs[1].id.encode(),
    ]


def test_an_idempotency_key_replayed_returns_the_first_job(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    once = PublishOnce()

    def publish(fingerprint: str, limit: int = 0) -> Once | Refused:
        job = new_job()
        return on_direct(
            lambda direct: once(direct, job, "k", fingerprint, 60, time.time(), "", limit)
        )

    first = publish("a")
    assert isinstance(first, Once) and first.match == "new"
    assert publish("a") == Once(first.id, "same")  # the replay
    assert publish("b") == Once(first.id, "different")
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 1
    assert 0 < queue_redis.ttl(constants.idempotency_key("k")) <= 60
    # a full queue refuses a new key, and still answers a repeat
    queue_redis.delete(constants.idempotency_key("k"))
    assert publish("c", limit=1) == Refused(QUEUE, 1)
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 1
