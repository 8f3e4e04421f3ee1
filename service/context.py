"""What a handler receives beside its payload."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from redis import Redis

from service import constants, jobs

if TYPE_CHECKING:  # pymongo is imported only where MongoDB is configured (worker memory)
    from pymongo.database import Database


class MongoNotConfigured(RuntimeError):
    """A handler asked for the database, but MONGODB_URI is not set."""


@dataclass(slots=True)
class JobContext:
    """The running job: its identity, the application's Redis, and a progress reporter.

    `redis` is the application's Redis (REDIS_*, db 0 by default), not the queue's.
    """

    id: str
    type: str
    queue: str
    attempt: int  # 1 on the first run
    redis: Redis
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("service.job"))
    queue_redis: Redis | None = None  # where progress is written
    database: Database[dict[str, Any]] | None = None

    @property
    def db(self) -> Database[dict[str, Any]]:
        """The application's MongoDB database (MONGODB_URI)."""
        if self.database is None:
            raise MongoNotConfigured(f"job type {self.type!r} needs MongoDB: set MONGODB_URI")
        return self.database

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100, and a short message); GET /jobs/{id} shows the latest.

        One Redis write per call: report per step, not per item of a tight loop.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"progress percent must be within 0-100, got {percent}")
        if self.queue_redis is not None:
            report = {"percent": percent, "message": message[:500], "at": jobs.utc_iso()}
            self.queue_redis.hset(constants.job_key(self.id), "progress", orjson.dumps(report))
