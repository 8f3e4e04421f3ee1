"""A job type on an every-second schedule, for the scheduler's real-process test."""

from __future__ import annotations

from service import job
from service.jobs.context import JobContext


@job("tick", every=1)
def tick(payload: object, ctx: JobContext) -> None:
    """Does nothing: the test counts the jobs the schedule publishes."""
