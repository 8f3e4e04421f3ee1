"""What the client raises: one base class, `ServiceError`, carrying the API's error (its HTTP
status, `code`, `message` and `details`, and `Retry-After` where the API sent one), and one
subclass per kind of failure a caller may handle differently."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.client.results import Job


class ServiceError(Exception):
    """Any failure of a call: the API's answer, or no answer at all (`status` None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: Mapping[str, Any] = details or {}
        self.retry_after = retry_after  # seconds, when the API said when to retry

    def __str__(self) -> str:
        head = f"{self.status} {self.code}: " if self.status is not None else ""
        return head + self.message


class Unauthorized(ServiceError):
    """401: no API key, or a key the API does not know."""


class NotFound(ServiceError):
    """404: no such job (`job_not_found`), or none in the dead-letter queue
    (`not_in_dead_letter_queue`); 410 `job_expired` too, as `JobExpired`."""


class JobExpired(NotFound):
    """410: the job's id shows it ended longer ago than jobs are kept."""


class InvalidRequest(ServiceError):
    """400, 413, 415, 422: the request was refused as it was (an unknown type, a payload its
    schema refuses, a bad option or parameter); `details["errors"]` lists each problem."""


class Conflict(ServiceError):
    """409: an Idempotency-Key used for another request, or a job too far along to cancel."""


class RateLimited(ServiceError):
    """429 `queue_full`: the queue holds MAX_BACKLOG waiting jobs; retry after
    `retry_after` seconds."""


class Unavailable(ServiceError):
    """503 (Redis down, full or not durable; see `code`), or no answer: the API could not be
    reached or did not answer in time (`status` None, `code` `unreachable` or `timeout`).
    Nothing was enqueued unless the request timed out: retry with an idempotency key."""


class WaitTimeout(ServiceError, TimeoutError):
    """`wait` ran out of time before the job ended; `job` is how it was last seen."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message, code="wait_timeout")
        self.job = job


# By HTTP status: the class of an error answer (anything else is a plain ServiceError).
BY_STATUS: Mapping[int, type[ServiceError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: JobExpired,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}
