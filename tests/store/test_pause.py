"""PAUSE, and CLAIM on a paused queue: publishing goes on, claiming skips the queue's three
priorities, resuming gives them back at once."""

from __future__ import annotations

from collections.abc import Callable

import redis

from service.config import constants
from service.store.connection import Direct
from service.store.pause import Pause
from tests.store.conftest import QUEUE

ALL = (f"{QUEUE}.high", QUEUE, f"{QUEUE}.low", "other")


def set_paused(on_direct: Callable, base: str, paused: bool) -> bool:
    async def scenario(direct: Direct) -> bool:
        return await Pause()(direct, base, paused)

    changed: bool = on_direct(scenario)
    return changed


def test_a_paused_queue_gives_no_job_of_any_priority_and_resumed_gives_them_all(
    queue_redis: redis.Redis, published: Callable, claim: Callable, on_direct: Callable
) -> None:
    # Given jobs in every priority of a queue, and in another queue
    high, default, low = (published(1, q)[0] for q in ALL[:3])
    other = published(1, "other")[0]
    # When the queue is paused
    assert set_paused(on_direct, QUEUE, True)
    # Then a claim takes only the other queue's job, and publishing goes on
    assert [c.id for c in claim(10, ALL)] == [other.id]
    later = published(1, QUEUE)[0]
    assert claim(10, ALL) == []
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 2
    assert queue_redis.smembers(constants.PAUSED_KEY) == {q.encode() for q in ALL[:3]}
    # And resumed, every job comes out, in drain order
    assert set_paused(on_direct, QUEUE, False)
    assert [c.id for c in claim(10, ALL)] == [high.id, default.id, later.id, low.id]
    assert queue_redis.exists(constants.PAUSED_KEY) == 0


def test_pause_and_resume_are_idempotent_and_say_when_they_change_something(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    assert set_paused(on_direct, QUEUE, True) is True
    assert set_paused(on_direct, QUEUE, True) is False
    assert set_paused(on_direct, "never-used", False) is False
    assert set_paused(on_direct, QUEUE, False) is True
    assert set_paused(on_direct, QUEUE, False) is False
    assert queue_redis.exists(constants.PAUSED_KEY) == 0


def test_a_resumed_queue_leaves_a_wake_up_token_per_waiting_job(
    queue_redis: redis.Redis, published: Callable, on_direct: Callable
) -> None:
    # Given a paused queue whose jobs' tokens idle workers took (and found nothing)
    set_paused(on_direct, QUEUE, True)
    published(3, QUEUE)
    queue_redis.delete(*(constants.wake_key(q) for q in ALL))
    # When it is resumed, the waiting jobs wake as many workers, capped as pushes are
    set_paused(on_direct, QUEUE, False)
    assert queue_redis.llen(constants.wake_key(QUEUE)) == 3
    assert queue_redis.exists(constants.wake_key(f"{QUEUE}.high")) == 0
    set_paused(on_direct, QUEUE, True)
    published(constants.WAKE_TOKENS_MAX, QUEUE)
    set_paused(on_direct, QUEUE, False)
    assert queue_redis.llen(constants.wake_key(QUEUE)) == constants.WAKE_TOKENS_MAX


def test_a_claim_reads_the_paused_set_once_whatever_it_takes(
    queue_redis: redis.Redis, published: Callable, claim: Callable
) -> None:
    # Redis counts the commands a script runs: one SMEMBERS per CLAIM, not one per queue or job
    published(20, QUEUE)
    queue_redis.config_resetstat()
    assert len(claim(20, ALL)) == 20
    stats = queue_redis.info("commandstats")
    assert stats["cmdstat_smembers"]["calls"] == 1
