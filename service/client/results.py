"""What the API answers, as frozen dataclasses: times as aware datetimes, the rest typed as
GET /openapi.json states it. Each keeps the answer it was read from in `raw` (fields a newer
API adds, the events of a job read from the MongoDB history)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Status = Literal["scheduled", "queued", "started", "finished", "failed", "canceled"]
# The states a job ends in: `wait` returns once a job is in one of them.
FINAL: frozenset[str] = frozenset({"finished", "failed", "canceled"})


def _time(value: Any) -> datetime | None:
    """RFC 3339 (the API's and RQ's `...Z`) as an aware datetime; None stays None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """A job the API accepted (`POST /jobs`, each job of `POST /jobs/batch`); for a repeat of
    an idempotent request, the original job as it is now."""

    id: str
    type: str | None
    queue: str | None
    status: str
    run_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Accepted:
        return cls(
            data["id"], data.get("type"), data.get("queue"), data["status"],
            _time(data.get("run_at")), data,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Progress:
    """What the handler last reported with `ctx.progress`."""

    percent: float | None
    message: str | None
    at: datetime | None

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, Mapping):
            return None
        percent = data.get("percent")
        return cls(
            float(percent) if isinstance(percent, int | float) else None,
            data.get("message"),
            _time(data.get("at")),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a job, from its history: `outcome` finished, retried, failed,
    interrupted or canceled; `reason` why it did not finish."""

    outcome: str | None
    reason: str | None
    error: str | None
    worker: str | None
    started_at: datetime | None
    ended_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            data.get("outcome"), data.get("reason"), data.get("error"), data.get("worker"),
            _time(data.get("started_at")), _time(data.get("ended_at")),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Job:
    """A job as `GET /jobs/{id}` shows it."""

    id: str
    type: str | None
    queue: str | None
    status: str
    attempts: int = 0
    retries_left: int = 0
    crashes: int = 0
    created_at: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    run_at: datetime | None = None
    worker: str | None = None
    progress: Progress | None = None
    result: Any = None  # the handler's return value (JSON)
    error: str | None = None  # the last line of the last failure
    history: tuple[Attempt, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job has ended: finished, failed (dead-lettered) or canceled."""
        return self.status in FINAL

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        history = data.get("history")
        return cls(
            id=data["id"],
            type=data.get("type"),
            queue=data.get("queue"),
            status=data.get("status") or "",
            attempts=_int(data.get("attempts")),
            retries_left=_int(data.get("retries_left")),
            crashes=_int(data.get("crashes")),
            created_at=_time(data.get("created_at")),
            enqueued_at=_time(data.get("enqueued_at")),
            started_at=_time(data.get("started_at")),
            ended_at=_time(data.get("ended_at")),
            run_at=_time(data.get("run_at")),
            worker=data.get("worker"),
            progress=Progress.from_json(data.get("progress")),
            result=data.get("result"),
            error=data.get("error"),
            history=tuple(Attempt.from_json(a) for a in history or () if isinstance(a, Mapping)),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Cancellation:
    """`cancel`: `canceled` at once (it was queued or scheduled), or `canceling` (its worker
    stops it; it ends `canceled`)."""

    id: str
    status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cancellation:
        return cls(data["id"], data["status"])


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A job in the dead-letter queue (`GET /dead`)."""

    id: str
    type: str | None
    queue: str
    failed_at: datetime | None
    expires_at: datetime | None
    attempts: int
    crashes: int
    reason: str | None
    error: str | None
    payload: Any
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeadJob:
        return cls(
            data["id"], data.get("type"), data.get("queue") or "",
            _time(data.get("failed_at")), _time(data.get("expires_at")),
            _int(data.get("attempts")), _int(data.get("crashes")),
            data.get("reason"), data.get("error"), data.get("payload"), data,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeadPage:
    """One page of `GET /dead`, newest failure first; `next_cursor` None on the last."""

    jobs: tuple[DeadJob, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeadPage:
        jobs = tuple(DeadJob.from_json(job) for job in data.get("jobs") or ())
        return cls(jobs, data.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class Requeued:
    """A dead job retried (`POST /dead/{id}/retry`): back on its queue, as new."""

    id: str
    queue: str
    status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Requeued:
        return cls(data["id"], data["queue"], data["status"])


@dataclass(frozen=True, slots=True)
class BulkRetry:
    """`POST /dead/retry`: how many matched (and were retried, unless `dry_run`), how many
    entries this request examined, the cursor to send again (None when done), and with
    `dry_run` the ids (at most 1000)."""

    dry_run: bool
    count: int
    examined: int
    next_cursor: str | None
    ids: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BulkRetry:
        return cls(
            bool(data.get("dry_run")), _int(data.get("count")), _int(data.get("examined")),
            data.get("next_cursor"), tuple(data.get("ids") or ()),
        )  # fmt: skip
