"""RECOVER and PROMOTE: the jobs of dead workers, and scheduled jobs falling due."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from service.config import constants
from service.jobs.states import Fate
from service.store import housekeeping
from service.store.claim import ClaimSync
from service.store.housekeeping import Blamed, Promoted, Recovered
from tests.store.conftest import MAX_CRASHES, QUEUE


def test_a_lost_process_blames_the_jobs_it_ran_and_puts_back_the_others(
    queue_redis: redis.Redis, published: Callable, claim: Callable
) -> None:
    published(3)
    running, waiting, other = claim(2) + claim(1, worker="w2")
    recover = lambda: housekeeping.recover(  # noqa: E731
        queue_redis, [QUEUE], max_crashes=MAX_CRASHES, owner="w", running=[running.id]
    )
    assert recover() == Recovered(0, 1, 1, (Blamed("noop", Fate.RETRIED),))
    job = queue_redis.hmget(constants.job_key(running.id), "status", "crashes")
    assert job == [b"queued", b"1"]
    assert queue_redis.hmget(constants.job_key(waiting.id), "status", "crashes") == [
        b"queued",
        None,
    ]
    # the interrupted job is first in line, the blamed one behind it
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [
        waiting.id.encode(),
        running.id.encode(),
    ]
    assert recover() == Recovered(0, 0, 0)  # the replay: nothing left of w's
    assert queue_redis.hget(constants.job_key(other.id), "status") == b"started"  # w2's


def test_a_dead_container_s_expired_jobs_are_all_blamed(
    queue_redis: redis.Redis, published: Callable
) -> None:
    published(2)
    expired = int(time.time()) - 1  # as if its heartbeat stopped
    ClaimSync(queue_redis, "gone", [QUEUE])(2, score=expired, execution="x")
    recovered = housekeeping.recover(queue_redis, [QUEUE], max_crashes=1)
    assert (recovered.failed, recovered.redelivered, recovered.interrupted) == (2, 0, 0)
    assert {b.fate for b in recovered.blamed} == {Fate.FAILED}  # MAX_CRASHES 1: dead at once
    assert housekeeping.recover(queue_redis, [QUEUE], max_crashes=1) == Recovered(0, 0, 0)


def test_interrupted_recovery_puts_every_held_job_back_uncounted(
    queue_redis: redis.Redis, published: Callable, claim: Callable
) -> None:
    published(2)
    claim(2)
    recovered = housekeeping.recover(
        queue_redis, [QUEUE], max_crashes=MAX_CRASHES, owner="w", mode="interrupted"
    )
    assert recovered == Recovered(0, 0, 2)
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 2


def test_promote_queues_due_jobs_and_says_when_the_next_is_due(
    queue_redis: redis.Redis, published: Callable
) -> None:
    now = time.time()
    (due,) = published(run_at=now - 1)
    (later,) = published(run_at=now + 60)
    assert queue_redis.hget(constants.job_key(due.id), "status") == b"scheduled"
    assert housekeeping.promote(queue_redis, [QUEUE]) == Promoted(1, pytest.approx(later.run_at))
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [due.id.encode()]
    assert queue_redis.hget(constants.job_key(due.id), "status") == b"queued"
    replay = housekeeping.promote(queue_redis, [QUEUE])
    assert replay == Promoted(0, pytest.approx(later.run_at))
    assert housekeeping.promote(queue_redis, ["empty"]) == Promoted(0, None)
