"""A job type that asks to keep its results for 30 days (loaded only by the processes of
tests/store/test_retention.py, through HANDLER_MODULES): above the default MAX_RESULT_TTL."""

from __future__ import annotations

from service import JobContext, job
from service.jobs.registry import EmptyPayload

MONTH = 30 * 24 * 3600


@job("test.keep_long", result_ttl=MONTH)
def keep_long(payload: EmptyPayload, ctx: JobContext) -> None:
    """Does nothing; its result is meant to be kept a month."""
