"""A Python client of the job service's HTTP API: `Client` (blocking) and `AsyncClient`
(asyncio), on httpx2 (`pip install 'service[client]'`).

    from service.client import Client

    with Client("http://localhost:3001", api_key="...") as jobs:
        accepted = jobs.submit("echo", {"hello": "world"}, priority="high")
        job = jobs.wait(accepted.id, timeout=60)  # a long-poll: one request per 30 s
        print(job.status, job.result)

It imports nothing else of this package (only httpx2 and the standard library), so it may be
copied into another project as it is."""

from __future__ import annotations

try:
    import httpx2  # noqa: F401 - here to fail early, with a hint
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "service.client needs httpx2: pip install 'service[client]' (or httpx2)"
    ) from exc

from service.client.async_client import AsyncClient
from service.client.exceptions import (
    Conflict,
    InvalidRequest,
    JobExpired,
    NotFound,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from service.client.results import (
    FINAL,
    Accepted,
    Attempt,
    BulkRetry,
    Cancellation,
    DeadJob,
    DeadPage,
    Job,
    Progress,
    Requeued,
)
from service.client.sync_client import Client
from service.client.wire import Submission

__all__ = [
    "FINAL",
    "Accepted",
    "AsyncClient",
    "Attempt",
    "BulkRetry",
    "Cancellation",
    "Client",
    "Conflict",
    "DeadJob",
    "DeadPage",
    "InvalidRequest",
    "Job",
    "JobExpired",
    "NotFound",
    "Progress",
    "RateLimited",
    "Requeued",
    "ServiceError",
    "Submission",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
