"""A job's states and the ends of its attempts, as named values: the scripts write these strings
to Redis, and the worker, the store, the history and the API read them through these types."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A job's `status` field, as RQ names it (the API shows the same words)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"  # waiting for its parents (depends_on) to finish
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"  # in the dead-letter queue
    CANCELED = "canceled"


class Ending(StrEnum):
    """How an attempt ended, as the worker reports it to the COMPLETE script."""

    OK = "ok"
    FAIL = "fail"  # retried by its policy while retries are left
    REJECT = "reject"  # failed without retry: an unknown type or an invalid payload
    CRASH = "crash"  # its runner died
    INTERRUPT = "interrupt"  # a shutdown stopped it: back to its queue, not counted
    CANCEL = "cancel"
    SKIP = "skip"  # claimed, never started: put back, nothing recorded


class Fate(StrEnum):
    """What the store made of an ended attempt (COMPLETE's reply, RECOVER's per blamed job)."""

    FINISHED = "finished"
    RETRIED = "retried"  # back on its queue, or scheduled for a retry
    FAILED = "failed"  # dead-lettered
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"
    NONE = ""  # a skip, or a claim no longer held: nothing was recorded


class Event(StrEnum):
    """A state change as the scripts append it to the history stream."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"  # published waiting for parents, or re-opened by a parent's retry
    STARTED = "started"
    RETRIED = "retried"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"
    DEAD = "dead"
    CANCELED = "canceled"

    @property
    def status(self) -> Status:
        """The job's status after this event."""
        return _STATUS_AFTER[self]


_STATUS_AFTER = {
    Event.QUEUED: Status.QUEUED,
    Event.SCHEDULED: Status.SCHEDULED,
    Event.DEFERRED: Status.DEFERRED,
    Event.STARTED: Status.STARTED,
    Event.RETRIED: Status.QUEUED,
    Event.INTERRUPTED: Status.QUEUED,
    Event.FINISHED: Status.FINISHED,
    Event.DEAD: Status.FAILED,
    Event.CANCELED: Status.CANCELED,
}
