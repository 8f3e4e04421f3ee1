"""What a job returns: JSON within MAX_RESULT_BYTES is stored, anything else fails the attempt
(in the worker process and in an isolated job's child), and nothing of a rejected result
reaches Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from service.api import dead_openapi
from service.config import constants
from service.config.settings import Settings
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import records
from service.jobs.registry import Registry
from service.worker import isolation
from service.worker.execute import Attempt, Claimed, Outcome
from service.worker.isolation import run_alone
from service.worker.recorder import Recorder
from tests.conftest import ServiceProcess, publish, wait_for

Start = Callable[..., ServiceProcess]
LIMIT = 64 * 1024  # MAX_RESULT_BYTES in these tests


def attempts(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The job's results-stream entries (one per attempt), decoded as the API shows them."""
    return [records.decode_result_entry(e) for _, e in client.xrange(constants.result_key(job_id))]


def status_of(client: redis.Redis, job_id: str) -> str:
    return (client.hget(constants.job_key(job_id), "status") or b"").decode()


# --- the encoding, alone ------------------------------------------------------------------------


def test_result_json_takes_json_up_to_the_limit() -> None:
    assert records.result_json({"a": [1, None]}, 100) == b'{"a":[1,null]}'
    assert records.result_json("x" * 98, 100) == b'"' + b"x" * 98 + b'"'  # exactly 100 bytes
    assert records.encode_return_value(b"null") == b""  # None: no return_value stored


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "Type is not JSON serializable: set"),
        ({1: "a"}, "Dict key must be str"),
        (2**64, "Integer exceeds 64-bit range"),
        (object(), "Type is not JSON serializable: object"),
    ],
)
def test_a_value_json_cannot_hold_is_rejected_with_the_encoders_message(
    value: Any, message: str
) -> None:
    with pytest.raises(records.ResultRejected) as caught:
        records.result_json(value, 100)
    assert caught.value.reason == "result_not_json"
    assert str(caught.value) == f"ResultNotJson: {message}"


def test_a_result_over_the_limit_is_rejected_naming_its_size_and_the_limit() -> None:
    with pytest.raises(records.ResultRejected) as caught:
        records.result_json("x" * 99, 100)
    assert caught.value.reason == "result_too_large"
    assert "101 bytes" in str(caught.value) and "MAX_RESULT_BYTES (100)" in str(caught.value)


def alone(result: Any) -> Attempt:
    """An attempt of a job type whose handler returns `result`, run alone (isolated)."""
    registry = Registry()
    registry.job("t", isolated=True)(lambda payload, ctx: result)
    data = orjson.dumps(["t", None, [{}], {}])
    return Attempt(Claimed("j", "j:bx1", data, 0, 1, "q", "", ""), registry, LIMIT)


def test_an_isolated_child_checks_its_result_before_writing_it() -> None:
    settings = Settings(max_result_bytes=LIMIT)
    ok = run_alone(alone([1, "a"]), settings)
    assert (ok.kind, ok.value) == ("ok", records.encode_return_value(b'[1,"a"]'))
    for result, reason in [({1, 2}, "result_not_json"), ("x" * LIMIT, "result_too_large")]:
        outcome = run_alone(alone(result), settings)
        assert (outcome.kind, outcome.reason) == ("fail", reason)


def test_the_worker_process_reads_no_more_than_the_largest_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A child that would send far more than MAX_RESULT_BYTES (whatever made it) is cut off.
    def huge(attempt: Attempt, clients: Any) -> Outcome:
        return Outcome(attempt.claimed, "ok", "t", b"x" * (100 * LIMIT))

    monkeypatch.setattr(isolation, "call_sync", huge)
    outcome = run_alone(alone(None), Settings(max_result_bytes=LIMIT))
    assert outcome.kind == "fail" and "wrote over" in outcome.error


# --- a worker process -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_result_that_is_not_json_fails_the_attempt_and_is_retried_by_its_policy(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1")
    # Given a handler returning {1, 2}, with one retry, and the same in an isolated child
    in_process = publish(redis_url, "test.not_json", max_retries=1)
    isolated = publish(redis_url, "test.not_json_isolated")
    # Then each attempt fails with reason result_not_json and the encoder's message
    wait_for(lambda: status_of(queue_redis, in_process) == "failed", 20)
    wait_for(lambda: status_of(queue_redis, isolated) == "failed", 20)
    entries = attempts(queue_redis, in_process)
    assert [e["outcome"] for e in entries] == ["retried", "failed"]
    for entry in [*entries, *attempts(queue_redis, isolated)]:
        assert entry["reason"] == "result_not_json"
        assert entry["error"] == "ResultNotJson: Type is not JSON serializable: set"
        assert "result" not in entry


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_result_over_max_result_bytes_fails_and_nothing_of_it_is_stored(
    start_service: Start, redis_url: str
) -> None:
    own = EmbeddedRedis().start()  # used_memory of this test's jobs alone
    queue = redis.Redis.from_url(f"{own.url}/1")
    try:
        start_service(
            worker=True,
            WORKER_CONCURRENCY="1",
            MAX_RESULT_BYTES=str(LIMIT),
            QUEUE_REDIS_URL=f"{own.url}/1",
        )
        # Given one job whose result is exactly the limit, to warm up the worker's keys
        at_limit = publish(own.url, "test.sized", {"chars": LIMIT - 2})
        wait_for(lambda: status_of(queue, at_limit) == "finished", 20)
        assert attempts(queue, at_limit)[0]["result"] == "x" * (LIMIT - 2)
        before = queue.info("memory")["used_memory"]
        # When handlers return 1 MB, 16 times the limit, in the process and in a child
        big = [publish(own.url, t, {"chars": 1_000_000}) for t in ("test.sized", "test.sized")]
        big.append(publish(own.url, "test.sized_isolated", {"chars": 1_000_000}))
        # Then each attempt fails with result_too_large, naming the size and the limit
        wait_for(lambda: all(status_of(queue, i) == "failed" for i in big), 20)
        for job_id in big:
            (entry,) = attempts(queue, job_id)
            assert entry["reason"] == "result_too_large"
            assert entry["error"] == (
                f"ResultTooLarge: the result is 1000002 bytes of JSON, over MAX_RESULT_BYTES "
                f"({LIMIT}); it was not stored"
            )
            assert "result" not in entry
        # and nothing of the results reached Redis: three failed jobs take a few KiB
        grown = queue.info("memory")["used_memory"] - before
        print(f"\nused_memory grew {grown} bytes for 3 rejected 1 MB results")
        assert grown < 64 * 1024
    finally:
        queue.close()
        own.stop()


def test_outcomes_are_recorded_once_they_carry_max_result_bytes() -> None:
    """One COMPLETE carries about MAX_RESULT_BYTES of results at most (plus the last one): a
    full Redis refuses the next call, so it is passed by one call's writes only."""
    unused: Any = None  # neither Redis nor its trouble is reached here
    recorder = Recorder(Settings(max_result_bytes=1024), "w", unused, unused, lambda o, f: None)
    batches: list[list[int]] = []
    for n, size in enumerate([600, 600, 100, 1400, 10]):
        claimed = Claimed(f"j{n}", f"j{n}:bx{n}", b"", 0, 1, "q", "", "")
        recorder.add(Outcome(claimed, "ok", "noop", b"x" * size), idle=False)  # others run
        if recorder._now.is_set():  # what the recorder then takes
            batches.append([len(o.value) for o in recorder.pending])
            recorder.pending, recorder._pending_bytes = [], 0
            recorder._now.clear()
    assert batches == [[600, 600], [100, 1400]]


def test_the_openapi_document_names_the_result_reasons_of_a_dead_job() -> None:
    page = dead_openapi.openapi_paths()["/dead"]["get"]["responses"]["200"]
    schema = page["content"]["application/json"]["schema"]["properties"]["jobs"]["items"]
    assert {"result_not_json", "result_too_large"} <= set(schema["properties"]["reason"]["enum"])
