"""Every call of the API written once, as a generator of steps that a client runs: a `Call`
(send it, after its `pause`; its answer's JSON is sent back in) or an `Item` (hand it to the
caller: the entries of a listing). `Client` runs them blocking and `AsyncClient` awaiting, so
the two differ only in how they send (the sans-I/O design of h11 and httpcore), and `wait`'s
loop and the listing's paging exist once."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, Unpack

from service.client import wire
from service.client.exceptions import WaitTimeout
from service.client.options import DeadFilters, Options
from service.client.results import (
    Accepted,
    BulkRetry,
    Cancellation,
    DeadJob,
    DeadPage,
    Job,
    Requeued,
)
from service.client.wire import Call, Submission

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    value: T


Steps = Generator[Call, Any, T]  # a call: its steps, then its result
Stream = Generator[Call | Item[T], Any, None]  # a listing: its steps and its items
S = TypeVar("S")


def advance(steps: Generator[S, Any, T], answer: Any) -> S | Done[T]:
    """The next step, the previous one's answer sent in; `Done` with the result at the end."""
    try:
        return steps.send(answer)
    except StopIteration as end:
        return Done(end.value)


def submit(type: str, payload: Any = None, **options: Unpack[Options]) -> Steps[Accepted]:
    """Submit one job (`POST /jobs`); options left out take the job type's defaults."""
    return Accepted.from_json((yield wire.submit(Submission(type, payload, **options))))


def submit_many(jobs: Iterable[Submission]) -> Steps[list[Accepted]]:
    """Submit 1-1000 jobs in one request (`POST /jobs/batch`), all or none."""
    answer = yield wire.submit_many(jobs)
    return [Accepted.from_json(job) for job in answer["jobs"]]


def get(job_id: str, *, wait: float = 0.0) -> Steps[Job]:
    """The job as it is; with `wait` (0-30 s), once it has ended or after that long."""
    return Job.from_json((yield wire.get(job_id, wait)))


def wait(job_id: str, timeout: float | None = None) -> Steps[Job]:
    """The job once it has ended (finished, failed or canceled): one long-poll request per
    30 s. Raises WaitTimeout (with the job as last seen) after `timeout` seconds; None waits
    for ever."""
    waiting = wire.Waiting(timeout, time.monotonic())
    pause = 0.0
    while True:
        asked, started = waiting.next_wait(time.monotonic() + pause), time.monotonic() + pause
        job = Job.from_json((yield replace(wire.get(job_id, asked), pause=pause)))
        now = time.monotonic()
        if job.done:
            return job
        if waiting.expired(now):
            raise WaitTimeout(wire.timed_out(job_id, timeout), job)
        pause = waiting.pause(asked, now - started, now)


def cancel(job_id: str) -> Steps[Cancellation]:
    """Cancel a queued or scheduled job at once, or ask a running one's worker to stop it
    (`canceling`: it ends `canceled`). Raises Conflict if it has ended already."""
    return Cancellation.from_json((yield wire.cancel(job_id)))


def dead(
    *, limit: int | None = None, cursor: str | None = None, **filters: Unpack[DeadFilters]
) -> Steps[DeadPage]:
    """One page of the dead-letter queue, newest failure first (`GET /dead`); follow
    `next_cursor` for the next."""
    return DeadPage.from_json((yield wire.dead(limit=limit, cursor=cursor, **filters)))


def iter_dead(*, page_size: int | None = None, **filters: Unpack[DeadFilters]) -> Stream[DeadJob]:
    """Every dead job matching the filters, page after page until the last."""
    cursor: str | None = None
    while True:
        page = DeadPage.from_json((yield wire.dead(limit=page_size, cursor=cursor, **filters)))
        for job in page.jobs:
            yield Item(job)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def retry_dead(job_id: str) -> Steps[Requeued]:
    """Put a dead job back on its queue, as new (`POST /dead/{id}/retry`)."""
    return Requeued.from_json((yield wire.retry_dead(job_id)))


def retry_dead_matching(
    *,
    all: bool = False,
    dry_run: bool = False,
    cursor: str | None = None,
    **filters: Unpack[DeadFilters],
) -> Steps[BulkRetry]:
    """Retry the dead jobs matching the filters (or `all=True`: every one), one bounded
    request (`POST /dead/retry`): send it again with `cursor=result.next_cursor` until that
    is None. `dry_run=True` counts them and changes nothing."""
    call = wire.retry_dead_matching(all=all, dry_run=dry_run, cursor=cursor, **filters)
    return BulkRetry.from_json((yield call))
