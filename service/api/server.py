"""Serving the publisher with uvicorn: graceful on the first signal, forced on the second."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from service.api.app import create_app
from service.api.protocol import guarded_protocol
from service.config import constants
from service.config.settings import Settings
from service.jobs.registry import Registry
from service.net.connections import fit_file_limit
from service.store import durability
from service.store.connection import connect
from service.store.waits import Waits
from service.telemetry import tracing

log = logging.getLogger("service.api")


class Server(uvicorn.Server):
    """uvicorn re-raises the signal after a graceful stop (exit 143); we exit 0 instead.
    The first signal also answers every long-poll at once (`Waits.release_all`), so that
    requests waiting for jobs do not hold the graceful stop up to their wait."""

    def __init__(self, config: uvicorn.Config, waits: Waits) -> None:
        super().__init__(config)
        self.waits = waits

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        self.waits.release_all()


def run(settings: Settings, registry: Registry) -> int:
    # A file per connection, and per Redis connection a request in flight may hold (a stalled
    # Redis holds one per request); a burst of accepts can take a whole backlog at once.
    connections = settings.max_connections
    needed = 2 * connections + constants.LISTEN_BACKLOG + constants.FILES_RESERVE
    why = (
        f"2 per connection (its own, one to Redis), {constants.LISTEN_BACKLOG} queued for "
        f"accept, {constants.FILES_RESERVE} for the process"
    )
    if problem := fit_file_limit(connections, needed, why):
        log.error("invalid configuration: %s", problem)
        return constants.EXIT_CONFIG
    with connect(settings.queue_redis) as client:
        refused = durability.problems_at_start(client, settings.durability == "strict")
    if refused:  # before any port is bound
        log.error("refusing to start (DURABILITY=strict): %s", "; ".join(refused))
        return constants.EXIT_CONFIG
    tracing.start("service-api")  # before the app is built: it adds the request span if on
    waits = Waits(settings.queue_redis)
    config = uvicorn.Config(
        create_app(settings, registry, waits),
        host=settings.host,
        port=settings.port,
        # uvicorn has no request-head timeout or size limit: our protocol adds both.
        http=guarded_protocol(
            settings.request_header_timeout,
            constants.MAX_HEAD_BYTES,
            constants.LINGER_SECONDS,
            connections,
        ),
        backlog=constants.LISTEN_BACKLOG,
        ws="none",  # no WebSocket routes: do not offer the upgrade
        timeout_keep_alive=constants.KEEP_ALIVE_SECONDS,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        server_header=False,
        proxy_headers=False,
    )
    server = Server(config, waits)
    try:
        server.run()
    finally:
        tracing.shutdown()  # export the last spans
    if not server.started:
        return constants.EXIT_STARTUP
    log.info("API stopped")
    return constants.EXIT_FORCED if server.force_exit else constants.EXIT_OK
