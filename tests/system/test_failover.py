"""Failover under load, with real processes: a primary, two replicas and three Sentinels;
steady HTTP publishes with Idempotency-Key and a worker draining; SIGKILL the primary. With
DURABILITY=replicated no acknowledged job is lost and none runs twice for the same attempt.
(How long recovery takes is measured by benchmarks/failover.py, not asserted here.)"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.dev.embedded_redis import free_port
from tests.conftest import ServiceProcess, http, wait_for
from tests.redis_ha import Group, SteadyPublisher, sentinel_env, watched


@pytest.fixture
def group() -> Iterator[Group]:
    group = Group()
    try:
        group.start()
        wait_for(lambda: watched(group), 20, 0.2)
        yield group
    finally:
        group.stop()


def test_replicated_writes_lose_no_acknowledged_job_across_a_failover(
    group: Group, tmp_path: Path
) -> None:
    ledger = tmp_path / "runs.txt"
    env = sentinel_env(
        group,
        DURABILITY="replicated",
        REDIS_REPLICA_TIMEOUT="500",
        HANDLER_MODULES="tests.failover_handlers",
        WORKER_CONCURRENCY="4",
    )
    api = ServiceProcess({**env, "PORT": str(free_port())}, log=tmp_path / "api.log")
    worker = ServiceProcess(
        {**env, "PORT": str(free_port()), "WORKER_MODE": "true"}, log=tmp_path / "worker.log"
    )
    api.wait_healthy()
    worker.wait_healthy()
    body = {"type": "test.ledger", "payload": {"path": str(ledger)}}
    publisher = SteadyPublisher(api.url, 40, lambda n: body).start()
    try:
        # Given jobs published and run at a steady rate
        wait_for(lambda: len(publisher.acks) >= 60, 20, 0.05)
        # When the primary dies
        old = group.primary_port()
        group.node(old or 0).kill()
        killed_at = time.monotonic()
        # Then a replica takes over and publishing goes on
        wait_for(lambda: group.primary_port() not in (None, old), 20, 0.1)
        wait_for(lambda: any(a.at > killed_at + 1 and a.tries == 1 for a in publisher.acks), 20)
        wait_for(lambda: len([a for a in publisher.acks if a.at > killed_at]) >= 60, 20, 0.05)
    finally:
        publisher.stop()
    assert publisher.failures, "the failover never reached the clients: nothing was tested"
    try:
        # And every acknowledged job runs to the end: none was lost with the primary
        def unfinished() -> list[str]:
            return [
                a.id
                for a in publisher.acks
                if http("GET", f"{api.url}/jobs/{a.id}")[2].get("status") != "finished"
            ]

        wait_for(lambda: not unfinished(), 30, 0.5)
        runs = collections.Counter(tuple(line.split()) for line in ledger.read_text().splitlines())
        ran = {job_id for job_id, _ in runs}
        assert {a.id for a in publisher.acks} <= ran
        # And no attempt ran twice
        assert [run for run, times in runs.items() if times > 1] == []
        # And the same worker and API processes did it all, without a restart
        assert api.process.poll() is None and worker.process.poll() is None
        assert len({a.key for a in publisher.acks}) == len(publisher.acks)
    finally:
        worker.stop()
        api.stop()
