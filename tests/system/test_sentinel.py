"""Sentinel: the API and a worker find the primary through three Sentinels and follow it to a
replica when it dies, without a restart; /ready says so in between."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.dev.embedded_redis import free_port
from tests.conftest import ServiceProcess, http, wait_for
from tests.redis_ha import MASTER, Group, sentinel_env, watched


@pytest.fixture
def group() -> Iterator[Group]:
    group = Group()
    try:
        group.start()
        wait_for(lambda: watched(group), 20, 0.2)
        yield group
    finally:
        group.stop()


def start(env: dict[str, str], log: Path, worker: bool = False) -> ServiceProcess:
    env = {**env, "PORT": str(free_port()), "WORKER_MODE": "true" if worker else "false"}
    return ServiceProcess(env, log=log).wait_healthy()


def test_api_and_worker_follow_the_primary_across_a_failover(group: Group, tmp_path: Path) -> None:
    env = sentinel_env(group)
    api = start(env, tmp_path / "api.log")
    worker = start(env, tmp_path / "worker.log", worker=True)
    try:
        # Given a job run through the primary Sentinel names
        def run_one(key: str) -> None:
            status, _, job = http(
                "POST", f"{api.url}/jobs", {"type": "test.count", "payload": {"key": key}}
            )
            assert status == 202, job
            wait_for(
                lambda: http("GET", f"{api.url}/jobs/{job['id']}")[2]["status"] == "finished", 20
            )

        run_one("before")
        assert f"redis://{MASTER}/1 (Sentinel {group.addresses})" in api.output
        old = group.primary_port()
        # When the primary dies
        group.node(old or 0).kill()
        # Then /ready reports the gap, and recovers once Sentinel promotes a replica
        wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 503, 15, 0.05)
        wait_for(lambda: group.primary_port() not in (None, old), 20, 0.1)
        wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 200, 15, 0.1)
        # And both processes work on, the same processes, on the new primary
        run_one("after")
        assert api.process.poll() is None and worker.process.poll() is None
        new = redis.Redis(port=group.primary_port() or 0)
        assert new.get("after") == b"1"
        new.close()
    finally:
        worker.stop()
        api.stop()
