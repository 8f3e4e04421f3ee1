"""What a handler receives beside its payload: the job's identity, clients and a progress
reporter. A plain handler gets a `JobContext` (blocking clients, shared by the threads of its
worker process); an `async def` handler gets an `AsyncJobContext` (asyncio clients on the
process's event loop). Either way the clients are created once per process, not per job."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from redis import Redis

from service.config import constants
from service.jobs import records

if TYPE_CHECKING:  # imported only where used: each costs a worker process memory
    import redis.asyncio as aioredis
    from pymongo.asynchronous.database import AsyncDatabase
    from pymongo.database import Database


_D = TypeVar("_D")  # a database handle, blocking or asyncio


class MongoNotConfigured(RuntimeError):
    """A handler asked for the database, but MONGODB_URI is not set."""


def _job_logger() -> logging.Logger:
    return logging.getLogger("service.job")


def _progress_report(job_type: str, percent: float, message: str) -> bytes:
    if not 0 <= percent <= 100:
        raise ValueError(f"progress percent must be within 0-100, got {percent}")
    return orjson.dumps({"percent": percent, "message": message[:500], "at": records.utc_iso()})


@dataclass(slots=True)
class _Job:
    """What both contexts say of the job: which one, and which run of it."""

    id: str
    type: str
    queue: str
    attempt: int  # 1 on the first run

    def _configured(self, database: _D | None) -> _D:
        if database is None:
            raise MongoNotConfigured(f"job type {self.type!r} needs MongoDB: set MONGODB_URI")
        return database


@dataclass(slots=True)
class JobContext(_Job):
    """The running job: its identity, the application's Redis, and a progress reporter.

    `redis` is the application's Redis (REDIS_*, db 0 by default), not the queue's.
    """

    redis: Redis
    logger: logging.Logger = field(default_factory=_job_logger)
    queue_redis: Redis | None = None  # where progress is written
    database: Database[dict[str, Any]] | None = None

    @property
    def db(self) -> Database[dict[str, Any]]:
        """The application's MongoDB database (MONGODB_URI)."""
        return self._configured(self.database)

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100, and a short message); GET /jobs/{id} shows the latest.

        One Redis write per call: report per step, not per item of a tight loop.
        """
        report = _progress_report(self.type, percent, message)
        if self.queue_redis is not None:
            self.queue_redis.hset(constants.job_key(self.id), "progress", report)


@dataclass(slots=True)
class AsyncJobContext(_Job):
    """`JobContext` for `async def` handlers: `redis` is a `redis.asyncio` client of the
    application's Redis, `db` pymongo's `AsyncDatabase`, and `progress` is awaited."""

    redis: aioredis.Redis
    logger: logging.Logger = field(default_factory=_job_logger)
    queue_redis: aioredis.Redis | None = None  # where progress is written
    database: AsyncDatabase[dict[str, Any]] | None = None

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        """The application's MongoDB database (MONGODB_URI), for `await`."""
        return self._configured(self.database)

    async def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100, and a short message); GET /jobs/{id} shows the latest."""
        report = _progress_report(self.type, percent, message)
        if self.queue_redis is not None:
            await self.queue_redis.hset(constants.job_key(self.id), "progress", report)
