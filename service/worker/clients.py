"""The clients a worker process's handlers use, created once per process.

Blocking clients (for plain handlers, shared by the process's threads: redis-py's and
pymongo's are thread-safe) are made at start and connect on first use. asyncio clients (for
`async def` handlers) are made on the event loop when the first async job runs, so a process
that runs none never builds them. A forked child (a job running alone) builds its own: a
client never crosses a fork.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from service.config.settings import Settings
from service.jobs.context import AsyncJobContext, JobContext
from service.store.connection import connect, connect_async

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from pymongo.asynchronous.database import AsyncDatabase
    from pymongo.database import Database

    from service.worker.execute import Attempt


class Clients:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: redis.Redis = connect(settings.redis)
        self.queue_redis: redis.Redis = connect(settings.queue_redis)
        self.db: Database[dict[str, Any]] | None = None
        if settings.mongodb_uri:  # imported here: pymongo costs a process megabytes
            from service.history import mongo

            self.db = mongo.connect(settings.mongodb_uri)
        self._async: tuple[aioredis.Redis, aioredis.Redis, AsyncDatabase[dict[str, Any]] | None]
        self._async_made = False

    def context(self, attempt: Attempt) -> JobContext:
        return JobContext(
            *_identity(attempt), self.redis, queue_redis=self.queue_redis, database=self.db
        )

    def async_context(self, attempt: Attempt) -> AsyncJobContext:
        """Called on the event loop only (the asyncio clients are bound to it)."""
        if not self._async_made:
            db = None
            if self.settings.mongodb_uri:
                from service.history import mongo

                db = mongo.connect_async(self.settings.mongodb_uri)
            app = connect_async(self.settings.redis)
            self._async = (app, connect_async(self.settings.queue_redis), db)
            self._async_made = True
        app, queue, db = self._async
        return AsyncJobContext(*_identity(attempt), app, queue_redis=queue, database=db)

    def close(self) -> None:
        self.redis.close()
        self.queue_redis.close()
        if self.db is not None:
            self.db.client.close()

    async def aclose(self) -> None:
        if self._async_made:
            app, queue, db = self._async
            await app.aclose()
            await queue.aclose()
            if db is not None:
                await db.client.close()


def _identity(attempt: Attempt) -> tuple[str, str, str, int]:
    """The job's id, type, queue and attempt number, as both contexts begin."""
    c = attempt.claimed
    return c.id, attempt.type, c.queue, c.attempt
