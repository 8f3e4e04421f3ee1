"""The keyword options of the clients' calls, typed (as the API names them)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict


class Options(TypedDict, total=False):
    """A job's options (`POST /jobs`); each left out takes the job type's default."""

    priority: str  # high, default or low
    delay: float  # seconds from now
    run_at: datetime | str  # an aware datetime, or RFC 3339 text; not with delay
    max_retries: int
    backoff: Mapping[str, Any]  # {"type": "exponential", "base": 2, "cap": 60, "jitter": True}
    timeout: int  # seconds the job may run
    result_ttl: int
    failure_ttl: int
    idempotency_key: str


class DeadFilters(TypedDict, total=False):
    """The filters of the dead-letter endpoints (`GET /dead`, `POST /dead/retry`)."""

    type: str  # a job type, or a prefix ending in `*`
    queue: str  # one RQ queue, priority included (`emails.high`)
    error: str  # a case-insensitive substring of the error text
    since: datetime | str
    until: datetime | str
