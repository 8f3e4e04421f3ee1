"""The worker container's tiny HTTP server: GET /health (liveness), GET /ready (readiness) and
GET /metrics (Prometheus; with API_KEYS set, only with `Authorization: Bearer <key>`).

Standard library only, on its own thread: the supervisor's main loop never waits on it. One
request per connection (HTTP/1.0), a thread per connection, and bounds the standard library's
server lacks:

- at most MAX_CONNECTIONS connections, so at most as many threads: at the limit a new one
  takes the place of the one waiting longest for its request (service/net/connections.py), or is
  closed at once when every one is being answered;
- the request line and headers must arrive within REQUEST_HEADER_TIMEOUT of the connection,
  however they trickle in, and fit in MAX_HEAD_BYTES, else the connection is closed;
- a listen backlog of LISTEN_BACKLOG, not socketserver's 5.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from service.config import constants
from service.config.settings import Settings
from service.net import apikeys
from service.net.connections import Connections
from service.telemetry.gauges import CONTENT_TYPE

Check = Callable[[], tuple[bool, dict[str, object]]]
log = logging.getLogger("service.worker")


class _HeadReader(io.RawIOBase):
    """A connection's bytes until its deadline (then a timeout, as the socket's own would
    raise) or until `budget` bytes (then an error): either way the connection is closed,
    unanswered."""

    def __init__(
        self,
        conn: socket.socket,
        deadline: float,
        budget: int,
        connections: Connections[socket.socket],
    ) -> None:
        self.conn = conn
        self.deadline = deadline
        self.budget = budget
        self.connections = connections

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request head did not arrive in time")
        if self.budget <= 0:
            raise ConnectionAbortedError(f"request head over {constants.MAX_HEAD_BYTES} bytes")
        self.conn.settimeout(left)
        view = memoryview(buffer)[: self.budget]
        read = self.conn.recv_into(view)
        self.budget -= read
        if read:
            self.connections.began(self.conn)
        return read


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = constants.LISTEN_BACKLOG

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int
    ) -> None:
        self.connections: Connections[socket.socket] = Connections(
            limit, _hang_up, "worker health server"
        )
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.opened(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client gone, too slow, or made room for
            log.debug("health server: connection from %s ended", client_address, exc_info=True)
        else:
            log.exception("health server: answering %s failed", client_address)


def _hang_up(conn: socket.socket) -> None:
    """End a connection its thread is reading: the read returns at once, empty."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class HealthServer:
    def __init__(
        self, settings: Settings, healthy: Check, ready: Check, metrics: Callable[[], bytes]
    ) -> None:
        checks = {"/health": healthy, "/ready": ready}
        # GET only: a read-only key reads the worker's metrics too.
        readers = (*settings.api_keys, *settings.api_readonly_keys)
        keys = [key.reveal().encode() for key in readers]
        head_timeout = settings.request_header_timeout

        class Handler(BaseHTTPRequestHandler):
            server: _BoundedServer

            def setup(self) -> None:
                super().setup()
                deadline = time.monotonic() + head_timeout
                self.rfile = io.BufferedReader(
                    _HeadReader(
                        self.connection,
                        deadline,
                        constants.MAX_HEAD_BYTES,
                        self.server.connections,
                    )
                )

            def parse_request(self) -> bool:
                parsed = super().parse_request()  # reads the headers
                self.server.connections.serving(self.connection)
                self.connection.settimeout(head_timeout)  # for writing the answer
                return parsed

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if not apikeys.allows(
                        keys, self.headers.get("Authorization", "").encode("latin-1")
                    ):
                        return self._unauthorized()
                    return self._send(200, CONTENT_TYPE, metrics())
                check = checks.get(path)
                body: dict[str, object]
                if check is None:
                    status, body = 404, {"error": {"code": "not_found", "message": "not found"}}
                else:
                    ok, details = check()
                    status, body = (200 if ok else 503), {"status": "ok" if ok else "unavailable"}
                    body.update(details)
                self._send(status, "application/json", orjson.dumps(body))

            def _unauthorized(self) -> None:
                message = "missing or invalid API key: send Authorization: Bearer <key>"
                body = orjson.dumps({"error": {"code": "unauthorized", "message": message}})
                self._send(401, "application/json", body, 'Bearer realm="jobs"')

            def _send(
                self, status: int, content_type: str, data: bytes, challenge: str = ""
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if challenge:
                    self.send_header("WWW-Authenticate", challenge)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds are not news

        self._server = _BoundedServer(
            (settings.host, settings.port), Handler, settings.max_connections
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
