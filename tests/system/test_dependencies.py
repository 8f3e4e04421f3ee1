"""Dependencies end to end: an API and a worker process over one Redis. A chain runs link by
link, a fan-in's child after every parent; a parent that fails for good cancels its
dependents, and retrying it from the dead-letter queue re-opens them, and they complete."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from service.jobs import records
from tests.conftest import TEST_HANDLERS, ServiceProcess, http, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]


def view(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{api.url}/jobs/{job_id}")
    assert status == 200
    result: dict[str, Any] = body
    return result


def stamp(value: str) -> float:
    moment = records.epoch(value)
    assert moment is not None
    return moment


def all_finished(api: ServiceProcess, ids: list[str]) -> bool:
    return all(view(api, job_id)["status"] == "finished" for job_id in ids)


@pytest.mark.timeout(100)
def test_a_chain_and_a_fan_in_complete_in_order(start_service: Start) -> None:
    # Given an API and a worker
    api = start_service(HANDLER_MODULES=TEST_HANDLERS)
    start_service(worker=True, HANDLER_MODULES=TEST_HANDLERS, WORKER_CONCURRENCY="8")

    # When a chain of 20 is published in one batch (each link names the one before)
    links = [{"type": "echo", "payload": {"n": 0}}]
    links += [
        {"type": "echo", "payload": {"n": i}, "depends_on": [f"${i - 1}"]} for i in range(1, 20)
    ]
    status, _, body = http("POST", f"{api.url}/jobs/batch", {"jobs": links})
    assert status == 202
    chain = [job["id"] for job in body["jobs"]]
    # and a fan-in of 50 parents into one child
    status, _, body = http("POST", f"{api.url}/jobs/batch", {"jobs": [{"type": "noop"}] * 50})
    parents = [job["id"] for job in body["jobs"]]
    status, _, child = http("POST", f"{api.url}/jobs", {"type": "noop", "depends_on": parents})
    assert status == 202 and child["status"] == "deferred"

    # Then all complete, each link started after the one before it ended
    wait_for(lambda: all_finished(api, [*chain, child["id"]]), timeout=60, interval=0.2)
    views = [view(api, job_id) for job_id in chain]
    for before, after in itertools.pairwise(views):
        assert stamp(after["started_at"]) >= stamp(before["ended_at"])
    child_started = stamp(view(api, child["id"])["started_at"])
    assert all(stamp(view(api, p)["ended_at"]) <= child_started for p in parents)


@pytest.mark.timeout(100)
def test_a_failing_parent_cancels_and_its_retry_re_opens(start_service: Start) -> None:
    # Given an API and a worker, and a parent that fails its first attempt, for good
    api = start_service(HANDLER_MODULES=TEST_HANDLERS)
    start_service(worker=True, HANDLER_MODULES=TEST_HANDLERS)
    batch = {
        "jobs": [
            {"type": "test.flaky", "payload": {"fail_times": 1}, "max_retries": 0},
            {"type": "echo", "payload": {"step": 1}, "depends_on": ["$0"]},
            {"type": "echo", "payload": {"step": 2}, "depends_on": ["$1"]},
            {"type": "noop", "depends_on": ["$0"], "allow_failure": True},
        ]
    }
    status, _, body = http("POST", f"{api.url}/jobs/batch", batch)
    assert status == 202
    parent, first, second, tolerant = (job["id"] for job in body["jobs"])

    # Then its dependents are canceled, saying why, and the tolerant one runs
    wait_for(lambda: view(api, second)["status"] == "canceled", timeout=20, interval=0.1)
    assert view(api, parent)["status"] == "failed"
    seen = view(api, first)
    assert (seen["status"], seen["reason"], seen["dependency"]) == (
        "canceled",
        "dependency_failed",
        parent,
    )
    assert view(api, second)["dependency"] == first
    wait_for(lambda: view(api, tolerant)["status"] == "finished", timeout=20, interval=0.1)

    # When the parent is retried from the dead-letter queue
    status, _, _ = http("POST", f"{api.url}/dead/{parent}/retry")
    assert status == 200

    # Then it finishes, and its dependents are re-opened and complete, in order
    wait_for(lambda: all_finished(api, [parent, first, second]), timeout=30, interval=0.1)
    assert view(api, first)["reason"] is None
    assert stamp(view(api, second)["started_at"]) >= stamp(view(api, first)["ended_at"])
