"""The service against a TLS-only redis-server that requires client certificates (its
default), with a throwaway CA made by openssl: real API and worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.config.settings import load
from service.dev.embedded_redis import free_port
from service.store.connection import connect, connect_async
from tests.conftest import ServiceProcess, base_env, http, wait_for
from tests.redis_ha import Certs, Node, make_certs, tls_node


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certs) -> Iterator[Node]:
    node = tls_node(certs).start()
    yield node
    node.stop()


def tls_env(node: Node, certs: Certs, **overrides: str) -> dict[str, str]:
    """The CA in the URL's query string, the client certificate in REDIS_TLS_* (both forms)."""
    url = f"rediss://127.0.0.1:{node.port}"
    return {
        "REDIS_URL": f"{url}/0?ssl_ca_certs={certs.ca}",
        "QUEUE_REDIS_URL": f"{url}/1?ssl_ca_certs={certs.ca}",
        "REDIS_TLS_CERT_FILE": str(certs.client_cert),
        "REDIS_TLS_KEY_FILE": str(certs.client_key),
        **overrides,
    }


def test_publish_run_finish_over_tls(tls_redis: Node, certs: Certs, tmp_path: Path) -> None:
    # Given an API and a worker whose only way to Redis is TLS with a client certificate
    env = base_env("unused", **tls_env(tls_redis, certs))
    api = ServiceProcess({**env, "PORT": str(free_port())}, log=tmp_path / "api.log")
    worker = ServiceProcess(
        {**env, "WORKER_MODE": "true", "PORT": str(free_port())}, log=tmp_path / "worker.log"
    )
    try:
        api.wait_healthy()
        worker.wait_healthy()
        # When a job is published
        status, _, job = http(
            "POST", f"{api.url}/jobs", {"type": "test.count", "payload": {"key": "tls"}}
        )
        assert status == 202, job
        # Then the worker runs it (its handler's own Redis client over TLS too) and it finishes
        url = f"{api.url}/jobs/{job['id']}"
        wait_for(lambda: http("GET", url)[2]["status"] == "finished", 20)
        assert http("GET", f"{api.url}/ready")[0] == 200
        # And the logs name the TLS target as rediss://, never a password
        assert f"rediss://127.0.0.1:{tls_redis.port}/1" in api.output
        assert f"rediss://127.0.0.1:{tls_redis.port}" in worker.output
    finally:
        worker.stop()
        api.stop()
    app = connect(load(tls_env(tls_redis, certs)).redis)
    assert app.get("tls") == b"1"
    app.close()


def test_the_logs_never_show_a_password(certs: Certs) -> None:
    settings = load({"REDIS_URL": f"rediss://:hunter2@127.0.0.1:6380/0?ssl_ca_certs={certs.ca}"})
    assert str(settings.redis) == "rediss://:*****@127.0.0.1:6380/0"
    assert "hunter2" not in repr(settings)


def test_a_wrong_ca_fails_with_a_clear_error(tls_redis: Node, certs: Certs) -> None:
    settings = load(
        tls_env(
            tls_redis,
            certs,
            REDIS_URL=f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={certs.other_ca}",
        )
    )
    client = connect(settings.redis)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()
    client.close()


def test_verification_none_accepts_any_server_certificate(tls_redis: Node, certs: Certs) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={certs.other_ca}"
    settings = load(tls_env(tls_redis, certs, REDIS_URL=url, REDIS_TLS_VERIFY="none"))
    client = connect(settings.redis)
    assert client.ping()
    client.close()


def test_without_a_client_certificate_the_server_refuses(tls_redis: Node, certs: Certs) -> None:
    settings = load(
        {"REDIS_URL": f"rediss://127.0.0.1:{tls_redis.port}/0", "REDIS_TLS_CA_FILE": str(certs.ca)}
    )
    client = connect(settings.redis)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()


def test_the_asyncio_client_speaks_tls_too(tls_redis: Node, certs: Certs) -> None:
    async def ping() -> int:
        client = connect_async(load(tls_env(tls_redis, certs)).queue_redis)
        try:
            assert await client.ping()
            return int((await client.client_info())["db"])
        finally:
            await client.aclose()

    assert asyncio.run(ping()) == 1
