"""CANCEL: a queued or scheduled job ends canceled at once, a started one is asked to stop."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.store.cancel import Cancel, Cancellation
from tests.store.conftest import QUEUE


def cancel(on_direct: Callable, job_id: str) -> Cancellation:
    script = Cancel(DEFAULT_RETENTION)
    return on_direct(lambda direct: script(direct, job_id, time.time()))


def test_a_queued_job_is_canceled_and_a_replay_conflicts(
    queue_redis: redis.Redis, published: Callable, on_direct: Callable
) -> None:
    (job,) = published()
    assert cancel(on_direct, job.id) == Cancellation("canceled", "canceled")
    assert queue_redis.llen(constants.queue_key(QUEUE)) == 0
    assert queue_redis.zscore(constants.registry_key("canceled", QUEUE), job.id)
    assert cancel(on_direct, job.id) == Cancellation("conflict", "canceled")  # the replay


def test_a_scheduled_job_is_canceled(
    queue_redis: redis.Redis, published: Callable, on_direct: Callable
) -> None:
    (job,) = published(run_at=time.time() + 60)
    assert cancel(on_direct, job.id) == Cancellation("canceled", "canceled")
    assert queue_redis.zcard(constants.registry_key("scheduled", QUEUE)) == 0


def test_a_started_job_is_asked_to_stop_on_its_worker_s_channel(
    queue_redis: redis.Redis, published: Callable, claim: Callable, on_direct: Callable
) -> None:
    (job,) = published()
    claim()
    pubsub = queue_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(constants.command_channel("w"))
    pubsub.get_message(timeout=1)
    assert cancel(on_direct, job.id) == Cancellation("canceling", "started")
    message = pubsub.get_message(timeout=2)
    assert message is not None and job.id.encode() in message["data"]
    pubsub.close()
    assert queue_redis.hget(constants.job_key(job.id), "status") == b"started"
    assert queue_redis.hexists(constants.job_key(job.id), "cancel_requested")


def test_a_missing_job(on_direct: Callable) -> None:
    assert cancel(on_direct, "nope") == Cancellation("missing", "")
