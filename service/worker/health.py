"""The worker container's tiny HTTP server: GET /health (liveness) and GET /ready (readiness).

Standard library only, on its own thread: the supervisor's main loop never waits on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from service.settings import Settings

Check = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    def __init__(self, settings: Settings, healthy: Check, ready: Check) -> None:
        checks = {"/health": healthy, "/ready": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                body: dict[str, object]
                if check is None:
                    status, body = 404, {"error": {"code": "not_found", "message": "not found"}}
                else:
                    ok, details = check()
                    status, body = (200 if ok else 503), {"status": "ok" if ok else "unavailable"}
                    body.update(details)
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
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
