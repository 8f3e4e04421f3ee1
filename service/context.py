"""What a handler receives beside its payload."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis


@dataclass(slots=True)
class JobContext:
    """The running job: its identity, and the application's connections.

    `redis` is the application's Redis (REDIS_*, db 0 by default), not the queue's.
    """

    id: str
    type: str
    queue: str
    attempt: int  # 1 on the first run
    redis: redis.Redis
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("service.job"))
