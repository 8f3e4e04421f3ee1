"""The worker container's tiny HTTP server: GET /health (liveness), GET /ready (readiness) and
GET /metrics (Prometheus).

Standard library only, on its own thread: the supervisor's main loop never waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from service.metrics import CONTENT_TYPE
from service.settings import Settings

Check = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    def __init__(
        self, settings: Settings, healthy: Check, ready: Check, metrics: Callable[[], bytes]
    ) -> None:
        checks = {"/health": healthy, "/ready": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
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

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds are not news

        self._server = ThreadingHTTPServer((settings.host, settings.port), Handler)
        self._server.daemon_threads = True
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
