"""The worker's hash as RQ's tools read it (_worker_stats.lua, run by CLAIM, COMPLETE and
HEARTBEAT): state, current job and RQ's counters, per script call."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from service.config import constants
from service.jobs import records
from service.jobs.states import Ending
from service.store.claim import Claimed
from service.store.complete import CompleteSync, Completion
from service.store.heartbeat import Heartbeat


def end(claimed: Claimed, ending: Ending, seconds: float) -> Completion:
    now = time.time()
    value = records.encode_return_value(b"1") if ending is Ending.OK else b"boom"
    return Completion(ending, claimed.id, claimed.queue, claimed.member, value, now - seconds, now)


def hash_of(client: redis.Redis, worker: str) -> dict[str, str]:
    fields = client.hgetall(constants.worker_key(worker))
    return {k.decode(): v.decode() for k, v in fields.items()}


def test_state_current_job_and_counts_follow_claims_and_ends(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    # Given a registered worker (its first heartbeat) holding two claimed jobs
    Heartbeat(queue_redis)("w", 60, time.time() + 60, {"state": "idle", "held": 0}, ["q"], [])
    published(2)
    first, second = claim(2)
    stats = hash_of(queue_redis, "w")
    assert (stats["state"], stats["held"], stats["current_job"]) == ("busy", "2", second.id)

    # When the one it names ends, the worker is still busy, naming none until its next beat
    complete("w", [end(second, Ending.OK, 0.5)], time.time())
    stats = hash_of(queue_redis, "w")
    assert (stats["state"], stats["held"], stats["successful_job_count"]) == ("busy", "1", "1")
    assert "current_job" not in stats
    beat = {"state": "busy", "held": 1}
    Heartbeat(queue_redis)("w", 60, time.time() + 60, beat, ["q"], [("q", first.member)])
    assert hash_of(queue_redis, "w")["current_job"] == first.id

    # And when the last ends (a failure), it is idle, with RQ's counters
    complete("w", [end(first, Ending.FAIL, 0.25)], time.time())
    stats = hash_of(queue_redis, "w")
    assert (stats["state"], stats["held"], stats["failed_job_count"]) == ("idle", "0", "1")
    assert "current_job" not in stats
    assert abs(float(stats["total_working_time"]) - 0.75) < 0.01
    # A replayed COMPLETE (its claims no longer held) changes nothing
    complete("w", [end(first, Ending.FAIL, 0.25)], time.time())
    assert hash_of(queue_redis, "w") == stats


def test_an_unregistered_worker_gets_no_hash_and_queues_are_listed_from_the_first_beat(
    queue_redis: redis.Redis, published: Callable, claim: Callable, complete: CompleteSync
) -> None:
    published(1)
    (job,) = claim(1)
    complete("w", [end(job, Ending.OK, 0.1)], time.time())
    assert not queue_redis.exists(constants.worker_key("w"))
    Heartbeat(queue_redis)("v", 60, time.time() + 60, {"state": "idle"}, ["a.high", "a"], [])
    assert {constants.queue_key("a.high"), constants.queue_key("a")} <= {
        key.decode() for key in queue_redis.smembers(constants.QUEUES_KEY)
    }
