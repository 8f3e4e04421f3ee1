"""A worker process's registration in Redis, as RQ's workers keep theirs (`rq:worker:<name>`,
`rq:workers`, `rq:workers:<q>`), and its heartbeat: the registration refreshed, and the
started-registry entries of the jobs it holds pushed ahead of the clock, so no other container
takes them for abandoned while it lives."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

import redis

from service.config import constants
from service.config.settings import Settings
from service.jobs import records
from service.store import housekeeping
from service.store.claim import Claimed
from service.store.connection import connect
from service.store.heartbeat import Heartbeat

log = logging.getLogger("service.worker")


def _version() -> str:
    """The installed package's version, shown per worker by the console (a rolling deploy
    runs two)."""
    try:
        return importlib.metadata.version("service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


class Registration:
    def __init__(self, settings: Settings, name: str, queues: Sequence[str]) -> None:
        self.settings = settings
        self.name = name
        self.queues = list(queues)
        self.key = constants.worker_key(name)
        self.birth = records.utc_iso()
        self.registered = threading.Event()  # the first heartbeat was sent

    def score(self) -> int:
        """Started-registry score: the heartbeat keeps it ahead of now while we live."""
        ttl = constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval
        return int(time.time() + ttl) + 1

    def beat(self, held: Callable[[], list[Claimed]], slots: Callable[[], str]) -> None:
        """Beat every WORKER_PROCESSING_INTERVAL, for ever: run it in a thread of its own, with
        its own client, so that jobs hogging the event loop or the GIL for a while do not make
        the jobs of a live process look abandoned. `held`: the jobs to keep; `slots`: how many
        of its slots run a job ("3/5")."""
        client = connect(self.settings.queue_redis)
        heartbeat = Heartbeat(client)
        ttl = int(constants.HEARTBEAT_MISSES * self.settings.worker_processing_interval) + 1
        while True:
            claimed = held()
            registration: dict[str, str | int] = {
                "birth": self.birth,
                "last_heartbeat": records.utc_iso(),
                "queues": ",".join(self.queues),
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "state": "busy" if claimed else "idle",
                "held": len(claimed),  # RQ's tools: see _worker_stats.lua
                "slots": slots(),
                "version": VERSION,
            }
            holding = [(c.queue, c.member) for c in claimed]
            try:
                heartbeat(self.name, ttl, self.score(), registration, self.queues, holding)
            except redis.RedisError as exc:
                log.debug("heartbeat failed: %s", exc)
            self.registered.set()
            time.sleep(self.settings.worker_processing_interval)

    def deregister(self) -> None:
        """Put back any job still held, then remove the registration."""
        client = connect(self.settings.queue_redis)
        try:
            housekeeping.recover(
                client,
                self.queues,
                max_crashes=self.settings.max_crashes,
                retention=self.settings.retention,
                owner=self.name,
                mode="interrupted",
            )
            with client.pipeline() as pipe:
                pipe.srem(constants.WORKERS_KEY, self.key)
                for queue in self.queues:
                    pipe.srem(constants.queue_workers_key(queue), self.key)
                pipe.delete(self.key)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)
        finally:
            client.close()
