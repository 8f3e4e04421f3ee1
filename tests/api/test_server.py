"""The publisher as a real process: graceful stop with a request in flight."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import orjson
import pytest
import redis

from tests.conftest import ServiceProcess, wait_for

pytestmark = pytest.mark.slow


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    api = start_service(SHUTDOWN_TIMEOUT="10")
    body = b'{"type": "echo", "payload": {"in": "flight"}}'
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        # Given a request whose body is still arriving
        conn.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (10, body[:10])
        )
        # When the API is told to stop, it stops accepting connections
        api.signal(signal.SIGTERM)
        wait_for(lambda: refused(api.port))
        # Then the request in flight still completes, and is enqueued
        rest = body[10:]
        conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        response = conn.recv(65536)
    assert response.startswith(b"HTTP/1.1 202")
    assert api.wait(15) == 0
    assert queue_redis.llen("rq:queue:app-queue") == 1


def test_json_logs_at_the_configured_level(
    start_service: Callable[..., ServiceProcess],
) -> None:
    api = start_service(LOG_FORMAT="json", LOG_LEVEL="WARNING")
    api.stop()
    quiet = api.output
    assert "startup complete" not in quiet  # INFO lines are filtered out
    api = start_service(LOG_FORMAT="json", LOG_LEVEL="INFO")
    api.stop()
    lines = [orjson.loads(line) for line in api.output.splitlines() if line.strip()]
    assert any(entry["message"].startswith("API: ") for entry in lines)
    assert {"time", "level", "logger", "message"} <= set(lines[0])
