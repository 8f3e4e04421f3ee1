"""One attempt of one claimed job: decode it, validate its payload, call its handler, and turn
whatever happened into the `Outcome` the COMPLETE script records.

The thread lanes (plain handlers), the event loop (`async def` handlers) and the forked child
(jobs that run alone) all run jobs through here. A running job is stopped from outside by a
`Stop` (raised in its thread, or as the cancellation of its task), whose kind says what
becomes of it: a timeout fails the attempt, a cancel ends the job, an interrupt puts it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from service.jobs import records
from service.jobs.policy import Backoff
from service.jobs.registry import (
    AsyncHandler,
    Handler,
    JobType,
    PayloadInvalid,
    Registry,
    UnknownJobType,
)
from service.jobs.states import Ending
from service.store.claim import Claimed
from service.store.complete import Completion
from service.telemetry import tracing
from service.worker import job_metrics

if TYPE_CHECKING:
    from service.worker.clients import Clients


class Stop(BaseException):
    """Stops a running job from outside. A BaseException, so a handler's `except Exception`
    cannot swallow it."""

    kind: ClassVar[Ending] = Ending.FAIL  # the COMPLETE outcome
    reason = ""  # the attempt's reason

    @classmethod
    def describe(cls, attempt: Attempt) -> str:
        return ""


class JobTimeout(Stop):
    """The job ran past its timeout."""

    reason = "timeout"

    @classmethod
    def describe(cls, attempt: Attempt) -> str:
        return f"JobTimeout: job exceeded its timeout of {attempt.timeout:g}s"


class Canceled(Stop):
    """DELETE /jobs/{id} stopped the job; it ends canceled, never retried."""

    kind, reason = Ending.CANCEL, "canceled"


class Interrupted(Stop):
    """A forced shutdown stopped the job; it goes back to its queue, not counted."""

    kind, reason = Ending.INTERRUPT, "interrupted"


@dataclass(slots=True)
class Outcome:
    """One claimed job's end, as the COMPLETE script takes it."""

    claimed: Claimed
    kind: Ending
    type: str = "unknown"  # a registered job type, or "unknown" (it is a metric label)
    value: bytes = b""  # the result (ok), or the error text
    reason: str = ""  # why an attempt failed: exception, timeout, interrupted, canceled ...
    started: float = 0.0
    ended: float = 0.0
    delay: float = 0.0  # before a retry
    error: str = ""  # the error text, for the log line
    trace_id: str = ""  # the attempt's trace, for the log line ('' with tracing off)

    def completion(self) -> Completion:
        """This end as the COMPLETE script records it."""
        c = self.claimed
        return Completion(
            self.kind,
            c.id,
            c.queue,
            c.member,
            self.value,
            self.started,
            self.ended,
            self.delay,
            self.reason,
        )


class Attempt:
    """One run of a claimed job: what it is, when it started, how it was told to stop."""

    __slots__ = (
        "claimed",
        "claimed_at",
        "ended",
        "max_result_bytes",
        "payload",
        "problem",
        "spec",
        "started",
        "stop",
        "stop_at",
        "taken",
        "timeout",
        "type",
    )

    def __init__(self, claimed: Claimed, registry: Registry, max_result_bytes: int) -> None:
        self.claimed = claimed
        self.max_result_bytes = max_result_bytes
        self.claimed_at = time.monotonic()
        self.started = 0.0
        self.taken = False  # a lane or task took it to run: it can no longer be given back
        self.spec: JobType | None = None
        self.type = "unknown"
        self.timeout = claimed.timeout
        self.payload: Any = None
        self.problem = ""  # why it cannot run here at all ('' if it can)
        self.stop: type[Stop] | None = None  # set by whoever stops it, before stopping it
        self.stop_at = 0.0  # when it was told to stop
        self.ended = False  # its outcome is known (set by the worker process's loop)
        try:
            name, self.payload = records.decode_data(claimed.data)
        except (ValueError, TypeError, LookupError) as exc:
            self.problem = f"UndecodableJob: the job's data is not this service's JSON ({exc})"
            return
        try:
            self.spec = registry.get(name)
        except UnknownJobType as exc:
            self.problem = f"UnknownJobType: {exc}"
            return
        self.type = self.spec.name
        if self.timeout <= 0:
            self.timeout = self.spec.timeout

    @property
    def is_async(self) -> bool:
        return self.spec is not None and self.spec.is_async

    @property
    def alone(self) -> bool:
        """Runs in a forked child: its type asks for isolation, or it has killed a runner."""
        return self.spec is not None and (self.spec.isolated or self.claimed.crashes > 0)

    def start(self) -> None:
        """The attempt starts now: timed from here, and counted."""
        self.started = time.time()
        job_metrics.started(self.type, self.claimed.enqueued_at, self.started)

    def validate(self) -> Any:
        """The payload as its model; raises PayloadInvalid."""
        assert self.spec is not None
        return self.spec.validate(self.payload)

    def rejected(self) -> Outcome | None:
        """The outcome of a job that cannot run here at all (an unknown type, data that is not
        ours): failed at once, never retried. None for a job that can run."""
        if not self.problem:
            return None
        self.start()  # counted as `unknown` (metric labels are registered types only)
        return self._failed(Ending.REJECT, "exception", self.problem)

    def succeeded(self, result: Any) -> Outcome:
        """The handler returned `result`: stored as JSON, unless it is not JSON or its JSON
        passes MAX_RESULT_BYTES (then the attempt fails, retried by its policy)."""
        try:
            encoded = records.result_json(result, self.max_result_bytes)
        except records.ResultRejected as exc:
            return self._failed(Ending.FAIL, exc.reason, str(exc))
        return self._outcome(Ending.OK, value=records.encode_return_value(encoded))

    def failed(self, exc: BaseException) -> Outcome:
        """The handler (or its payload's validation) raised `exc`."""
        if isinstance(exc, PayloadInvalid):  # would fail again: no retry
            fields = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
            return self._failed(Ending.REJECT, "exception", f"PayloadInvalid: {exc}: {fields}")
        return self._failed(Ending.FAIL, "exception", "".join(traceback.format_exception(exc)))

    def stopped(self, stop: type[Stop] | Stop) -> Outcome:
        if stop.kind is Ending.FAIL:
            return self._failed(Ending.FAIL, stop.reason, stop.describe(self))
        return self._outcome(stop.kind, reason=stop.reason)

    def failed_with(self, error: str) -> Outcome:
        """A failed attempt, retried by its policy, with this error text."""
        return self._failed(Ending.FAIL, "exception", error)

    def reported(
        self, kind: Ending, value: bytes, reason: str, error: str, delay: float
    ) -> Outcome:
        """The outcome a forked child reported, timed by this process."""
        return self._outcome(kind, value=value, reason=reason, delay=delay, error=error)

    def crashed(self, error: str) -> Outcome:
        """The runner died under the job (its forked child, when it runs alone)."""
        return self._failed(Ending.CRASH, "worker_lost", error)

    def skipped(self) -> Outcome:
        """Claimed, never started: back to the head of its queue, nothing recorded."""
        return Outcome(self.claimed, Ending.SKIP, self.type)

    def _failed(self, kind: Ending, reason: str, error: str) -> Outcome:
        delay = self._retry_delay() if kind is Ending.FAIL else 0.0
        value = records.encode_exc_string(error)
        return self._outcome(kind, value=value, reason=reason, delay=delay, error=error)

    def _outcome(
        self,
        kind: Ending,
        *,
        value: bytes = b"",
        reason: str = "",
        delay: float = 0.0,
        error: str = "",
    ) -> Outcome:
        started = self.started
        ended = time.time() if started else 0.0
        return Outcome(self.claimed, kind, self.type, value, reason, started, ended, delay, error)

    def _retry_delay(self) -> float:
        if not self.claimed.backoff:
            return 0.0
        return Backoff.from_json(self.claimed.backoff).delay(self.claimed.attempt)


def run_sync(attempt: Attempt, clients: Clients) -> Outcome:
    """Run a plain handler in this thread, in the attempt's span when tracing is on."""
    with span_of(attempt) as finish:
        return finish(call_sync(attempt, clients))


async def run_async(attempt: Attempt, clients: Clients) -> Outcome:
    """Run an `async def` handler on this event loop, in the attempt's span."""
    with span_of(attempt) as finish:
        return finish(await call_async(attempt, clients))


def call_sync(attempt: Attempt, clients: Clients) -> Outcome:
    """Call a plain handler (in a lane's thread, or a forked child). A `Stop` raised into the
    thread while the handler runs becomes the outcome it names."""
    assert attempt.spec is not None
    try:
        if not attempt.started:
            attempt.start()
        handler = cast(Handler, attempt.spec.handler)
        result = handler(attempt.validate(), clients.context(attempt))
    except Stop as stop:
        return attempt.stopped(stop)
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's outcome
        return attempt.failed(exc)
    return attempt.succeeded(result)


async def call_async(attempt: Attempt, clients: Clients) -> Outcome:
    """Await an `async def` handler. Cancelled with `attempt.stop` set, the outcome is the
    one that stop names; any other cancellation passes through."""
    assert attempt.spec is not None
    try:
        if not attempt.started:
            attempt.start()
        handler = cast(AsyncHandler, attempt.spec.handler)
        result = await handler(attempt.validate(), clients.async_context(attempt))
    except asyncio.CancelledError:
        if attempt.stop is None:
            raise
        return attempt.stopped(attempt.stop)
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's outcome
        return attempt.failed(exc)
    return attempt.succeeded(result)


@contextlib.contextmanager
def span_of(attempt: Attempt) -> Iterator[Callable[[Outcome], Outcome]]:
    """With tracing on, the attempt's span (a child of the context the job carries), named
    after its type and outcome by the function this yields; with tracing off, nothing."""
    if not tracing.enabled():
        yield _untraced
        return
    c = attempt.claimed
    with tracing.job_span(c.traceparent, c.id, c.queue, c.attempt) as span:

        def finish(outcome: Outcome) -> Outcome:
            tracing.set_outcome(span, outcome.type, outcome.kind, outcome.reason, outcome.error)
            outcome.trace_id = tracing.current_trace_id()
            return outcome

        yield finish


def _untraced(outcome: Outcome) -> Outcome:
    return outcome
