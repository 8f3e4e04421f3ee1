"""What Redis can lose: warned about at start (relaxed), refused (DURABILITY=strict)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.config import constants
from service.dev.embedded_redis import EmbeddedRedis, free_port
from service.store import durability
from service.store.durability import Persistence
from tests.conftest import ServiceProcess, base_env, http, wait_for

SAFE = Persistence("noeviction", appendonly=True, appendfsync="always", save="")


def test_risks_name_what_can_lose_jobs() -> None:
    assert SAFE.risks() == [] and SAFE.strict_problems() == []
    everysec = Persistence("noeviction", True, "everysec", "")
    assert everysec.risks() == []
    assert "appendfsync always" in everysec.strict_problems()[0]
    lru = Persistence("allkeys-lru", True, "always", "")
    assert "'allkeys-lru'" in lru.risks()[0] and "'allkeys-lru'" in lru.strict_problems()[0]
    assert "restart loses every queued job" in Persistence("noeviction", False, "", "").risks()[0]
    assert "since the last snapshot" in Persistence("noeviction", False, "", "3600 1").risks()[0]
    assert "appendfsync no" in Persistence("noeviction", True, "no", "").risks()[0]


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own: its configuration is changed."""
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def run(url: str, wait: bool = True, **env: str) -> ServiceProcess:
        settings = base_env(url, PORT=str(free_port()), **env)
        process = ServiceProcess(settings, log=tmp_path / f"service-{len(started)}.log")
        started.append(process)
        return process.wait_healthy() if wait else process

    yield run
    for process in started:
        process.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker", ["false", "true"])
def test_strict_refuses_a_redis_that_can_lose_jobs_before_binding(
    own_redis: EmbeddedRedis, start: Callable[..., ServiceProcess], worker: str
) -> None:
    """The test Redis runs without persistence: strict mode exits 78 and binds no port."""
    service = start(own_redis.url, wait=False, WORKER_MODE=worker, DURABILITY="strict")
    assert service.wait(30) == constants.EXIT_CONFIG
    assert "refusing to start (DURABILITY=strict)" in service.output
    assert "appendfsync always" in service.output
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", service.port), timeout=1)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_relaxed_warns_and_runs(
    own_redis: EmbeddedRedis, start: Callable[..., ServiceProcess]
) -> None:
    redis.Redis.from_url(own_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    api = start(own_redis.url)
    assert "Redis can lose jobs: maxmemory-policy is 'allkeys-lru'" in api.output
    assert "Redis can lose jobs: persistence is off" in api.output
    assert http("POST", f"{api.url}/jobs", {"type": "noop"})[0] == 202


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_strict_api_accepts_jobs_only_once_redis_is_durable(
    start: Callable[..., ServiceProcess],
) -> None:
    """Started before Redis (nothing to check yet), then given a Redis that is not durable:
    503 and not ready, nothing enqueued; once Redis fsyncs every write, 202."""
    server = EmbeddedRedis()
    server.port = free_port()
    api = start(server.url, DURABILITY="strict")
    assert "cannot check Redis persistence yet" in api.output
    server.start()
    try:
        client = redis.Redis.from_url(f"{server.url}/1")
        status, headers, body = http("POST", f"{api.url}/jobs", {"type": "noop"})
        assert (status, body["error"]["code"]) == (503, "redis_not_durable"), body
        assert "appendfsync always" in body["error"]["message"]
        assert headers["retry-after"] == str(constants.RETRY_AFTER_SECONDS)
        assert not client.keys("rq:job:*") and not client.keys("rq:queue:*")
        status, _, ready = http("GET", f"{api.url}/ready")
        assert status == 503 and ready["durability"] == "not_durable"  # the why: in the log
        wait_for(lambda: "not ready: durability: DURABILITY=strict needs" in api.output)

        client.config_set("appendonly", "yes")
        client.config_set("appendfsync", "always")
        wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 200)
        status, _, body = http("POST", f"{api.url}/jobs", {"type": "noop"})
        assert status == 202, body
        assert client.llen(constants.queue_key("app-queue")) == 1
    finally:
        server.stop()


def test_a_user_denied_config_get_is_warned_about_not_a_crash(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis user that may not run CONFIG GET (as the least-privilege rule makes it)
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "noconfig", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"]
    )
    client = redis.Redis.from_url(redis_url.replace("redis://", "redis://noconfig:pw@"))
    try:
        # When the start-up check runs, Then it warns and lets a relaxed service start,
        assert durability.read(client) is None
        assert durability.problems_at_start(client, strict=False) == []
        assert "cannot read Redis's configuration" in caplog.text
        # and a strict one is refused with the reason
        assert durability.problems_at_start(client, strict=True) == [
            "CONFIG GET is disabled or denied on this Redis: DURABILITY=strict cannot verify it"
        ]
    finally:
        client.close()
        admin.acl_deluser("noconfig")
        admin.close()
