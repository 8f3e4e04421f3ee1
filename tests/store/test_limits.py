"""Limits in the store: CLAIM parks a job over its type's rate or concurrency limit (no attempt
spent, other types claimed past it), the lease of a running attempt is freed by every ending,
and per-key limits keep tenants apart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from service.config import constants
from service.jobs import records
from service.jobs.limit import Limit
from service.jobs.states import Ending
from service.store import housekeeping
from service.store.complete import CompleteSync, Completion
from service.store.heartbeat import Heartbeat
from service.store.publish import publish_now
from tests.store.conftest import MAX_CRASHES, QUEUE


def limit(client: redis.Redis, job_type: str, **given: Any) -> None:
    """The code's limit of `job_type`, as a worker container declares it."""
    spec = Limit.of(given.get("rate"), given.get("concurrency"), given.get("key"))
    assert spec is not None
    client.hset(constants.limit_config_key(job_type), "code", spec.encode())
    client.sadd(constants.LIMITED_KEY, job_type)


def publish(client: redis.Redis, job_type: str, count: int, **payload: Any) -> list[str]:
    jobs = [
        records.NewJob(records.new_id(), job_type, QUEUE, dict(payload), 180, 0)
        for _ in range(count)
    ]
    publish_now(client, jobs)
    return [job.id for job in jobs]


def status(client: redis.Redis, job_id: str) -> tuple[str, str]:
    fields = client.hmget(constants.job_key(job_id), "status", "attempts")
    return records.as_text(fields[0] or b""), records.as_text(fields[1] or b"")


def end(complete: CompleteSync, claimed: Any, ending: Ending = Ending.OK) -> None:
    now = time.time()
    completion = Completion(ending, claimed.id, claimed.queue, claimed.member, b"", now, now)
    complete("w", [completion], now)


def test_a_concurrency_limit_parks_the_rest_without_an_attempt_and_claims_past_them(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    # Given a type limited to 2 running, 4 of its jobs queued in front of 2 unlimited ones
    limit(queue_redis, "limited", concurrency=2)
    limited = publish(queue_redis, "limited", 4)
    free = publish(queue_redis, "noop", 2)
    # When a worker claims them all
    taken = [c.id for c in claim(10)]
    # Then 2 limited ones start, the other 2 wait, and the unlimited ones were not held up
    assert taken == limited[:2] + free
    for job_id in limited[2:]:
        assert status(queue_redis, job_id) == ("scheduled", "0")  # no attempt spent
        assert queue_redis.zscore(constants.registry_key("scheduled", QUEUE), job_id)
    leases = constants.limit_key("limit_leases_key", "limited")
    assert queue_redis.zcard(leases) == 2
    assert queue_redis.zcard(constants.limit_key("limit_held_key", "limited")) == 2


def test_an_ending_frees_its_lease_and_the_oldest_held_job_comes_back_first(
    queue_redis: redis.Redis, claim: Callable, complete: CompleteSync
) -> None:
    limit(queue_redis, "limited", concurrency=1)
    first, second, third = publish(queue_redis, "limited", 3)
    running = claim(10)
    assert [c.id for c in running] == [first]
    # When the running one finishes (or fails: any ending frees the lease)
    end(complete, running[0], Ending.FAIL)
    # Then the first held job is at the head of the queue again, queued, its attempts untouched
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, -1) == [second.encode()]
    assert status(queue_redis, second) == ("queued", "0")
    assert [c.id for c in claim(10)] == [second]
    assert status(queue_redis, second) == ("started", "1")
    assert status(queue_redis, third) == ("scheduled", "0")
    assert queue_redis.zcard(constants.limit_key("limit_leases_key", "limited")) == 1


def test_a_dead_workers_lease_comes_back_through_recovery(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    limit(queue_redis, "limited", concurrency=1)
    _, second = publish(queue_redis, "limited", 2)
    [held] = claim(10)
    # When the worker holding it dies (its started entry expires) and a container recovers it
    queue_redis.zadd(constants.registry_key("started", QUEUE), {held.member: 1})
    housekeeping.recover(queue_redis, [QUEUE], max_crashes=MAX_CRASHES)
    # Then the lease is free again, and the held job is back at the head, behind nothing
    assert queue_redis.zcard(constants.limit_key("limit_leases_key", "limited")) == 0
    assert queue_redis.lrange(constants.queue_key(QUEUE), 0, 0) == [second.encode()]
    assert [c.id for c in claim(1)] == [second]


def test_the_heartbeat_renews_a_lease_and_an_expired_one_is_dropped_when_read(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    limit(queue_redis, "limited", concurrency=1)
    publish(queue_redis, "limited", 2)
    [held] = claim(10)
    leases = constants.limit_key("limit_leases_key", "limited")
    later = int(time.time()) + 600
    Heartbeat(queue_redis)("w", 60, later, {"state": "busy"}, [QUEUE], [(QUEUE, held.member)])
    assert queue_redis.zscore(leases, held.member) == later
    # A lease long expired (a lost ending) no longer counts: the next job starts
    queue_redis.zadd(leases, {held.member: time.time() - constants.LIMIT_LEASE_GRACE - 5})
    promote_all(queue_redis)
    assert len(claim(10)) == 1


def promote_all(client: redis.Redis) -> None:
    """Make every parked job due now, and promote it."""
    key = constants.registry_key("scheduled", QUEUE)
    for member in client.zrange(key, 0, -1):
        client.zadd(key, {member: 0})
    housekeeping.promote(client, [QUEUE])


def test_a_rate_limit_admits_n_per_window_and_reserves_each_parked_job_its_own_instant(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    limit(queue_redis, "rated", rate="3/second")
    jobs = publish(queue_redis, "rated", 7)
    before = time.time()
    assert [c.id for c in claim(10)] == jobs[:3]
    scheduled = constants.registry_key("scheduled", QUEUE)
    due = [queue_redis.zscore(scheduled, job_id) for job_id in jobs[3:]]
    # The 4th to 6th are due as the 1st to 3rd starts leave the window, the 7th a window later
    assert all(d is not None for d in due)
    assert before + 0.9 < due[0] <= due[1] <= due[2] < before + 1.5
    assert before + 1.9 < due[3] < before + 2.5
    assert all(status(queue_redis, job_id) == ("scheduled", "0") for job_id in jobs[3:])
    # Brought back early, they are parked again: no window ever holds more than 3 starts
    promote_all(queue_redis)
    assert claim(10) == []


def test_per_key_limits_keep_one_tenant_from_holding_up_another(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    limit(queue_redis, "report", concurrency=1, key="customer_id")
    busy = publish(queue_redis, "report", 3, customer_id="a")
    other = publish(queue_redis, "report", 1, customer_id="b")
    keyless = publish(queue_redis, "report", 1)
    taken = [c.id for c in claim(10)]
    # Tenant a runs one, its others wait; b and the payload without the field ('') each run
    assert taken == [busy[0], *other, *keyless]
    assert queue_redis.hget(constants.job_key(other[0]), "limit_key") == b"b"
    assert queue_redis.hget(constants.job_key(keyless[0]), "limit_key") == b""
    assert queue_redis.zcard(constants.limit_key("limit_held_key", "report", "a")) == 2


def test_the_apis_override_wins_over_the_code_and_takes_effect_at_the_next_claim(
    queue_redis: redis.Redis, claim: Callable
) -> None:
    limit(queue_redis, "limited", concurrency=1)
    key = constants.limit_config_key("limited")
    queue_redis.hset(key, "override", Limit(concurrency=3).encode())
    publish(queue_redis, "limited", 4)
    assert len(claim(10)) == 3
    queue_redis.hdel(key, "override")
    publish(queue_redis, "limited", 1)
    assert claim(10) == []  # back to the code's 1 (3 already running)
