"""Dependencies (_dependents.lua): a job deferred until its parents finish, canceled when one
cannot (unless it allows failures), re-opened when that parent is retried; RQ's data model."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry
from rq.serializers import JSONSerializer

from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.jobs import records
from service.jobs.states import Ending, Event, Fate, Status
from service.store.cancel import Cancel, Cancellation
from service.store.complete import CompleteSync, Completion
from service.store.dead_letters import DeadLetters, Retried
from service.store.publish import Unknown, publish_now
from tests.store.conftest import QUEUE, new_job


def child(*parents: records.NewJob | str, **fields: Any) -> records.NewJob:
    ids = tuple(p if isinstance(p, str) else p.id for p in parents)
    return new_job(depends_on=ids, **fields)


def status(client: redis.Redis, job: records.NewJob) -> str:
    return (client.hget(constants.job_key(job.id), "status") or b"").decode()


def fields(client: redis.Redis, job: records.NewJob, *names: str) -> list[str | None]:
    return [v.decode() if v else None for v in client.hmget(constants.job_key(job.id), *names)]


def waiting_for(client: redis.Redis, job: records.NewJob) -> set[str]:
    return {m.decode() for m in client.smembers(constants.dependencies_key(job.id))}


def queued(client: redis.Redis) -> list[str]:
    return [m.decode() for m in client.lrange(constants.queue_key(QUEUE), 0, -1)]


def deferred(client: redis.Redis) -> set[str]:
    return {m.decode() for m in client.zrange(constants.registry_key("deferred", QUEUE), 0, -1)}


class Runner:
    """Claims every queued job and ends the chosen ones (the others go back untouched)."""

    def __init__(self, client: redis.Redis, complete: CompleteSync, claim: Callable) -> None:
        self.client, self.complete, self.claim = client, complete, claim

    def end(self, ending: Ending, *jobs: records.NewJob) -> list[Fate]:
        wanted = {job.id for job in jobs}
        value = records.encode_exc_string("boom") if ending is not Ending.OK else ""
        endings = [
            Completion(ending if c.id in wanted else Ending.SKIP, c.id, QUEUE, c.member, value)
            for c in self.claim(1000)
        ]
        fates = self.complete("w", endings, time.time())
        return [fate for fate, e in zip(fates, endings, strict=True) if e.id in wanted]

    def finish(self, *jobs: records.NewJob) -> None:
        assert self.end(Ending.OK, *jobs) == [Fate.FINISHED] * len(jobs)

    def kill(self, *jobs: records.NewJob) -> None:  # failed for good: dead-lettered
        assert self.end(Ending.REJECT, *jobs) == [Fate.FAILED] * len(jobs)


def runner(queue_redis: redis.Redis, complete: CompleteSync, claim: Callable) -> Runner:
    return Runner(queue_redis, complete, claim)


def retry(on_client: Callable, *jobs: records.NewJob) -> Retried:
    def scenario(client: aioredis.Redis) -> Awaitable[Retried]:
        return DeadLetters(client).retry([job.id for job in jobs])

    result: Retried = on_client(scenario)
    return result


def test_a_child_waits_until_every_parent_finished(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    a, b = new_job(), new_job()
    c = child(a, b)
    assert publish_now(queue_redis, [a, b, c]) is None
    assert status(queue_redis, c) == "deferred" and deferred(queue_redis) == {c.id}
    assert queued(queue_redis) == [a.id, b.id]
    assert waiting_for(queue_redis, c) == {a.id, b.id}
    assert queue_redis.smembers(constants.dependents_key(a.id)) == {c.id.encode()}
    run = runner(queue_redis, complete, claim)

    run.finish(a)
    assert status(queue_redis, c) == "deferred" and waiting_for(queue_redis, c) == {b.id}
    assert not queue_redis.exists(constants.dependents_key(a.id))  # done with
    run.finish(b)
    assert status(queue_redis, c) == "queued" and queued(queue_redis) == [c.id]
    assert deferred(queue_redis) == set()
    assert not queue_redis.exists(constants.dependencies_key(c.id))


def test_rq_reads_a_deferred_job_as_deferred(queue_redis: redis.Redis) -> None:
    a, b = new_job(), new_job()
    c = child(a, b, allow_failure=True)
    publish_now(queue_redis, [a, b, c])
    job = Job.fetch(c.id, connection=queue_redis, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.DEFERRED and job.is_deferred
    assert job._dependency_ids == [a.id, b.id]
    assert sorted(job.dependency_ids) == sorted([a.id, b.id])  # RQ's set of the parents
    assert job.allow_dependency_failures is True
    assert job.dependency is not None and job.dependency.id == a.id
    assert DeferredJobRegistry(QUEUE, connection=queue_redis).get_job_ids() == [c.id]
    parent = Job.fetch(a.id, connection=queue_redis, serializer=JSONSerializer)
    assert parent.dependent_ids == [c.id]


def test_a_parent_failing_for_good_cancels_its_dependents_down_the_chain(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    a = new_job()
    chain = [a]
    for _ in range(200):  # one script, no Lua recursion
        chain.append(child(chain[-1]))
    other = new_job()
    publish_now(queue_redis, [*chain, other])
    runner(queue_redis, complete, claim).kill(a)
    for parent, job in itertools.pairwise(chain):
        assert fields(queue_redis, job, "status", "cancel_reason", "cancel_dependency") == [
            "canceled",
            "dependency_failed",
            parent.id,
        ]
    canceled = queue_redis.zcard(constants.registry_key("canceled", QUEUE))
    assert canceled == 200 and deferred(queue_redis) == set()
    assert 0 < queue_redis.ttl(constants.job_key(chain[-1].id)) <= constants.FAILURE_TTL
    assert queued(queue_redis) == [other.id]  # untouched


def test_allow_failure_runs_the_dependent_when_a_parent_fails(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    a, b = new_job(), new_job()
    tolerant, strict = child(a, b, allow_failure=True), child(a, b)
    publish_now(queue_redis, [a, b, tolerant, strict])
    run = runner(queue_redis, complete, claim)
    run.kill(a)
    assert status(queue_redis, strict) == "canceled"
    assert status(queue_redis, tolerant) == "deferred"  # still waits for b
    run.finish(b)
    assert status(queue_redis, tolerant) == "queued"


def test_retrying_the_dead_parent_re_opens_its_dependents(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable, on_client: Callable
) -> None:
    a = new_job()
    b = child(a)
    c = child(b)
    publish_now(queue_redis, [a, b, c])
    run = runner(queue_redis, complete, claim)
    run.kill(a)
    assert [status(queue_redis, j) for j in (b, c)] == ["canceled", "canceled"]

    assert retry(on_client, a) == Retried({a.id: QUEUE})
    assert [status(queue_redis, j) for j in (a, b, c)] == ["queued", "deferred", "deferred"]
    assert fields(queue_redis, b, "cancel_reason", "ended_at") == [None, None]
    assert queue_redis.ttl(constants.job_key(b.id)) == -1
    assert queue_redis.zcard(constants.registry_key("canceled", QUEUE)) == 0
    assert deferred(queue_redis) == {b.id, c.id}
    run.finish(a)
    run.finish(b)
    run.finish(c)
    assert [status(queue_redis, j) for j in (a, b, c)] == ["finished"] * 3


def test_a_parent_already_finished_or_dead_decides_at_publish(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable, on_client: Callable
) -> None:
    done, dead = new_job(), new_job()
    publish_now(queue_redis, [done, dead])
    run = runner(queue_redis, complete, claim)
    run.finish(done)
    run.kill(dead)
    after_done, after_dead, tolerant = child(done), child(dead), child(dead, allow_failure=True)
    publish_now(queue_redis, [after_done, after_dead, tolerant])
    assert status(queue_redis, after_done) == "queued"
    assert fields(queue_redis, after_dead, "status", "cancel_reason", "cancel_dependency") == [
        "canceled",
        "dependency_failed",
        dead.id,
    ]
    assert status(queue_redis, tolerant) == "queued"
    assert queued(queue_redis) == [after_done.id, tolerant.id]
    assert retry(on_client, dead) == Retried({dead.id: QUEUE})  # re-opens it too
    assert status(queue_redis, after_dead) == "deferred"


def test_unknown_parents_refuse_the_whole_publish(queue_redis: redis.Redis) -> None:
    a = new_job()
    publish_now(queue_redis, [a])
    before = queue_redis.dbsize()
    fresh = new_job()
    batch = [fresh, child(fresh, a), child("nope", "gone"), child("nope")]
    assert publish_now(queue_redis, batch) == Unknown(("nope", "gone"))
    assert queue_redis.dbsize() == before  # nothing written


def test_an_expired_parent_counts_as_failed(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable, on_client: Callable
) -> None:
    # A parent whose hash is gone before it finished: nothing shows it finished.
    a, b = new_job(), new_job()
    c = child(a, b)
    publish_now(queue_redis, [a, b, c])
    run = runner(queue_redis, complete, claim)
    run.kill(a, b)
    assert fields(queue_redis, c, "cancel_dependency")[0] in (a.id, b.id)
    queue_redis.delete(constants.job_key(b.id))  # b's failure_ttl passed
    retry(on_client, a)
    assert fields(queue_redis, c, "status", "cancel_reason", "cancel_dependency") == [
        "canceled",
        "dependency_missing",
        b.id,
    ]
    # And at publish, an expired parent is unknown: a 422, nothing enqueued.
    assert publish_now(queue_redis, [child(b)]) == Unknown((b.id,))


def test_a_fan_in_queues_the_child_once_the_last_parent_finished(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    parents = [new_job() for _ in range(60)]
    c = child(*parents)
    publish_now(queue_redis, [*parents, c])
    run = runner(queue_redis, complete, claim)
    run.finish(*parents[:59])
    assert status(queue_redis, c) == "deferred"
    assert waiting_for(queue_redis, c) == {parents[59].id}
    run.finish(parents[59])
    assert status(queue_redis, c) == "queued"


def test_a_chain_runs_link_by_link(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    chain = [new_job()]
    for _ in range(20):
        chain.append(child(chain[-1]))
    publish_now(queue_redis, chain)
    run = runner(queue_redis, complete, claim)
    for link, following in zip(chain, [*chain[1:], None], strict=True):
        assert queued(queue_redis) == [link.id]
        run.finish(link)
        if following is not None:
            assert status(queue_redis, following) == "queued"
    assert queued(queue_redis) == [] and deferred(queue_redis) == set()


def test_canceling_a_deferred_job_cancels_its_dependents(
    queue_redis: redis.Redis, on_direct: Callable
) -> None:
    a = new_job()
    b = child(a)
    c = child(b)
    d = child(b, allow_failure=True)
    publish_now(queue_redis, [a, b, c, d])
    script = Cancel(DEFAULT_RETENTION)
    outcome = on_direct(lambda direct: script(direct, b.id, time.time()))
    assert outcome == Cancellation("canceled", "canceled")
    assert fields(queue_redis, c, "status", "cancel_reason", "cancel_dependency") == [
        "canceled",
        "dependency_canceled",
        b.id,
    ]
    assert status(queue_redis, d) == "queued"
    assert deferred(queue_redis) == set()
    assert not queue_redis.exists(constants.dependencies_key(b.id))


def test_a_delayed_child_is_scheduled_when_its_parents_finish(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    a = new_job()
    later = child(a, run_at=time.time() + 3600)
    publish_now(queue_redis, [a, later])
    runner(queue_redis, complete, claim).finish(a)
    assert status(queue_redis, later) == "scheduled"
    assert queue_redis.zscore(constants.registry_key("scheduled", QUEUE), later.id)


def test_history_records_the_new_states(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable
) -> None:
    queue_redis.set(constants.HISTORY_ON_KEY, 1)
    a = new_job()
    b = child(a)
    c = child(b)
    publish_now(queue_redis, [a, b, c])
    runner(queue_redis, complete, claim).kill(a)
    events = [
        (e[b"id"].decode(), e[b"status"].decode(), e.get(b"reason", b"").decode())
        for _, e in queue_redis.xrange(constants.HISTORY_STREAM)
    ]
    assert (b.id, "deferred", "") in events and (c.id, "deferred", "") in events
    assert (b.id, "canceled", "dependency_failed") in events
    assert (c.id, "canceled", "dependency_failed") in events
    assert Event("deferred").status == Status.DEFERRED  # the shipper's reading of it


def test_a_retry_re_opens_a_diamond_and_keeps_a_job_another_failed_parent_blocks(
    queue_redis: redis.Redis, complete: CompleteSync, claim: Callable, on_client: Callable
) -> None:
    a, other = new_job(), new_job()
    left, right = child(a), child(a)
    bottom = child(left, right)
    blocked = child(a, other)
    publish_now(queue_redis, [a, other, left, right, bottom, blocked])
    run = runner(queue_redis, complete, claim)
    run.kill(a, other)
    assert {status(queue_redis, j) for j in (left, right, bottom, blocked)} == {"canceled"}

    retry(on_client, a)
    assert [status(queue_redis, j) for j in (left, right, bottom)] == ["deferred"] * 3
    assert fields(queue_redis, blocked, "status", "cancel_reason", "cancel_dependency") == [
        "canceled",
        "dependency_failed",
        other.id,
    ]
    run.finish(a)
    run.finish(left, right)
    assert status(queue_redis, bottom) == "queued"
