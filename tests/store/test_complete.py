"""COMPLETE: every way an attempt ends, and a replayed call that records nothing twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from service.config import constants
from service.jobs import records
from service.jobs.states import Ending, Fate
from service.store import housekeeping
from service.store.claim import Claimed
from service.store.complete import CompleteSync, Completion
from tests.store.conftest import MAX_CRASHES, QUEUE

ERROR = records.encode_exc_string("Boom: it broke")


def end(claimed: Claimed, ending: Ending, **fields: object) -> Completion:
    now = time.time()
    fields.setdefault("value", ERROR if ending is not Ending.OK else b"")
    member = claimed.member
    return Completion(
        ending, claimed.id, claimed.queue, member, started=now - 0.1, ended=now, **fields
    )


def status(client: redis.Redis, job_id: str) -> str:
    return (client.hget(constants.job_key(job_id), "status") or b"").decode()


def test_ok_finishes_and_a_replay_records_nothing(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published()
    (job,) = claim()
    ok = end(job, Ending.OK, value=records.encode_return_value(b'{"a":1}'))
    assert complete("w", [ok], time.time()) == [Fate.FINISHED]
    assert status(queue_redis, job.id) == "finished"
    assert queue_redis.zscore(constants.registry_key("finished", QUEUE), job.id)
    assert not queue_redis.zscore(constants.registry_key("started", QUEUE), job.member)
    assert complete("w", [ok], time.time()) == [Fate.NONE]  # the replay
    assert queue_redis.xlen(constants.result_key(job.id)) == 1


def test_a_failure_with_backoff_is_scheduled_then_dead_lettered(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(retries=1)  # the worker turns its backoff policy into the delay
    (job,) = claim()
    failed = end(job, Ending.FAIL, delay=30, reason="exception")
    now = time.time()
    assert complete("w", [failed], now) == [Fate.RETRIED]
    assert status(queue_redis, job.id) == "scheduled"
    due = queue_redis.zscore(constants.registry_key("scheduled", QUEUE), job.id)
    assert due == pytest.approx(now + 30, abs=0.01)
    assert queue_redis.hget(constants.job_key(job.id), "retries_left") == b"0"
    assert complete("w", [failed], now) == [Fate.NONE]  # the replay: not retried twice
    assert queue_redis.hget(constants.job_key(job.id), "retries_left") == b"0"
    # Due again, claimed, and failed with no retry left: dead
    queue_redis.zadd(constants.registry_key("scheduled", QUEUE), {job.id: 0})
    assert housekeeping.promote(queue_redis, [QUEUE]).moved == 1
    (again,) = claim()
    assert again.attempt == 2
    assert complete("w", [end(again, Ending.FAIL, reason="exception")], now) == [Fate.FAILED]
    assert status(queue_redis, job.id) == "failed"
    assert queue_redis.zscore(constants.registry_key("failed", QUEUE), job.id)


def test_a_failure_without_delay_is_queued_again(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(retries=2)
    (job,) = claim()
    assert complete("w", [end(job, Ending.FAIL, reason="exception")], time.time()) == [Fate.RETRIED]
    assert status(queue_redis, job.id) == "queued"
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [job.id.encode()]


def test_a_rejected_job_is_dead_whatever_its_retries(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(retries=5)
    (job,) = claim()
    rejected = end(job, Ending.REJECT, reason="exception")
    assert complete("w", [rejected], time.time()) == [Fate.FAILED]
    assert status(queue_redis, job.id) == "failed"


def test_crashes_redeliver_until_max_crashes_then_fail(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(retries=5)
    for n in range(1, MAX_CRASHES):
        (job,) = claim()
        assert job.crashes == n - 1
        crash = end(job, Ending.CRASH, reason="worker_lost")
        assert complete("w", [crash], time.time()) == [Fate.RETRIED]
        assert complete("w", [crash], time.time()) == [Fate.NONE]  # the replay
        assert queue_redis.hget(constants.job_key(job.id), "crashes") == str(n).encode()
        assert queue_redis.hget(constants.job_key(job.id), "retries_left") == b"5"
    (job,) = claim()
    assert complete("w", [end(job, Ending.CRASH, reason="worker_lost")], time.time()) == [
        Fate.FAILED
    ]
    assert status(queue_redis, job.id) == "failed"


def test_an_interrupt_puts_the_job_back_at_the_head_uncounted(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    first, second = published(2)
    (job,) = claim(1)
    interrupted = end(job, Ending.INTERRUPT, reason="interrupted")
    assert complete("w", [interrupted], time.time()) == [Fate.INTERRUPTED]
    assert complete("w", [interrupted], time.time()) == [Fate.NONE]  # the replay
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [
        first.id.encode(),
        second.id.encode(),
    ]
    assert queue_redis.hget(constants.job_key(job.id), "attempts") == b"0"
    assert queue_redis.xlen(constants.result_key(job.id)) == 1


def test_a_skip_puts_the_job_back_and_records_nothing(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published()
    (job,) = claim()
    skip = Completion(Ending.SKIP, job.id, job.queue, job.member)
    assert complete("w", [skip], time.time()) == [Fate.NONE]
    assert status(queue_redis, job.id) == "queued"
    assert queue_redis.xlen(constants.result_key(job.id)) == 0
    assert [c.id for c in claim()] == [job.id]


def test_a_cancel_ends_the_job_canceled(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published()
    (job,) = claim()
    canceled = end(job, Ending.CANCEL, reason="canceled")
    assert complete("w", [canceled], time.time()) == [Fate.CANCELED]
    assert complete("w", [canceled], time.time()) == [Fate.NONE]  # the replay
    assert status(queue_redis, job.id) == "canceled"
    assert queue_redis.zscore(constants.registry_key("canceled", QUEUE), job.id)


def test_one_call_records_a_whole_batch_in_order(
    published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(3)
    a, b, c = claim()
    endings = [end(a, Ending.OK), end(b, Ending.FAIL, reason="exception"), end(c, Ending.SKIP)]
    assert complete("w", endings, time.time()) == [Fate.FINISHED, Fate.FAILED, Fate.NONE]
