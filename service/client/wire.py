"""The requests the clients send and how their answers are read, shared by `Client` and
`AsyncClient` (which only differ in how they send): each API call is a `Call`; `answer` turns a
response into its JSON or raises the typed error."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Unpack
from urllib.parse import quote

import httpx2

from service.client import exceptions
from service.client.options import DeadFilters

MAX_WAIT = 30.0  # seconds one GET /jobs/{id}?wait= may wait (the API's limit)


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    wait: float = 0.0  # seconds the API may hold the answer (added to the client's timeout)
    pause: float = 0.0  # seconds to sleep before sending it


@dataclass(frozen=True, slots=True)
class Submission:
    """One job to submit, as `POST /jobs` takes it: options left None take the job type's
    defaults. `run_at` is an aware datetime or RFC 3339 text; `backoff` a mapping
    (`{"type": "exponential", "base": 2, "cap": 60, "jitter": True}`)."""

    type: str
    payload: Any = None
    priority: str | None = None
    delay: float | None = None
    run_at: datetime | str | None = None
    max_retries: int | None = None
    backoff: Mapping[str, Any] | None = None
    timeout: int | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    idempotency_key: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.payload is not None:
            body["payload"] = self.payload
        for name in ("priority", "delay", "max_retries", "timeout", "result_ttl", "failure_ttl"):
            if (value := getattr(self, name)) is not None:
                body[name] = value
        if self.run_at is not None:
            run_at = self.run_at
            body["run_at"] = run_at.isoformat() if isinstance(run_at, datetime) else run_at
        if self.backoff is not None:
            body["backoff"] = dict(self.backoff)
        if self.idempotency_key is not None:
            body["idempotency_key"] = self.idempotency_key
        return body


def submit(job: Submission) -> Call:
    return Call("POST", "/jobs", body=job.body())


def submit_many(jobs: Iterable[Submission]) -> Call:
    return Call("POST", "/jobs/batch", body={"jobs": [job.body() for job in jobs]})


def get(job_id: str, wait: float = 0.0) -> Call:
    if not 0 <= wait <= MAX_WAIT:  # neither nan nor inf
        raise ValueError(f"wait must be 0-{MAX_WAIT:g} seconds, not {wait}")
    params = {"wait": f"{wait:.3f}"} if wait > 0 else {}
    return Call("GET", f"/jobs/{_segment(job_id)}", params, wait=wait)


def cancel(job_id: str) -> Call:
    return Call("POST", f"/jobs/{_segment(job_id)}/cancel")


def dead(
    *, limit: int | None = None, cursor: str | None = None, **filters: Unpack[DeadFilters]
) -> Call:
    params = _filters(filters)
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/dead", params)


def retry_dead(job_id: str) -> Call:
    return Call("POST", f"/dead/{_segment(job_id)}/retry")


def retry_dead_matching(
    *,
    all: bool = False,
    dry_run: bool = False,
    cursor: str | None = None,
    **filters: Unpack[DeadFilters],
) -> Call:
    body: dict[str, Any] = {**_filters(filters), "dry_run": dry_run}
    if all:
        body["all"] = True
    if cursor is not None:
        body["cursor"] = cursor
    return Call("POST", "/dead/retry", body=body)


def _filters(filters: DeadFilters) -> dict[str, str]:
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in filters.items()
        if isinstance(value, datetime | str)
    }


def _segment(job_id: str) -> str:
    """A job id as one path segment: ids are letters, digits, `-` and `_`; anything else
    (a `/`, a `?`) is escaped, so it can only name a job that does not exist."""
    return quote(job_id, safe="")


def answer(response: httpx2.Response) -> Any:
    """The answer's JSON (None for an empty body), or the typed error it is."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:300] or response.reason_phrase, {}
    kind = exceptions.BY_STATUS.get(response.status_code, exceptions.ServiceError)
    raise kind(
        message,
        status=response.status_code,
        code=code,
        details=details,
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the API sends seconds
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def unreachable(exc: httpx2.TransportError) -> exceptions.Unavailable:
    """No answer: refused, reset, or timed out (the request may have been served)."""
    timed_out = isinstance(exc, httpx2.TimeoutException)
    code = "timeout" if timed_out else "unreachable"
    return exceptions.Unavailable(f"{type(exc).__name__}: {exc}", code=code)


def options(url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """The httpx2 client's options (either kind's)."""
    headers = {"User-Agent": "service-client", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": url, "headers": headers, "timeout": timeout}


def request(call: Call, timeout: float) -> dict[str, Any]:
    """The arguments of httpx2's `request` for `call`: a long-poll's timeout is the client's
    plus its wait."""
    return {
        "method": call.method,
        "url": call.path,
        "params": call.params,
        "json": call.body,
        "timeout": timeout + call.wait,
    }


class Waiting:
    """`wait`'s bookkeeping, the same for both clients: each request long-polls for what is
    left of the timeout (30 s at most); an answer that came back early without the job having
    ended (a server that does not long-poll, or one shutting down) is followed by a pause that
    doubles up to 1 s, so the loop never spins."""

    def __init__(self, timeout: float | None, now: float) -> None:
        self.deadline = None if timeout is None else now + max(timeout, 0.0)
        self.backoff = 0.05

    def next_wait(self, now: float) -> float:
        if self.deadline is None:
            return MAX_WAIT
        return min(MAX_WAIT, max(self.deadline - now, 0.0))

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def pause(self, asked: float, took: float, now: float) -> float:
        """Seconds to sleep before the next request."""
        if took >= asked - 0.5:  # it long-polled: ask again at once
            self.backoff = 0.05
            return 0.0
        pause, self.backoff = self.backoff, min(self.backoff * 2, 1.0)
        return pause if self.deadline is None else min(pause, max(self.deadline - now, 0.0))


def timed_out(job_id: str, timeout: float | None) -> str:
    return f"job {job_id} did not end within {timeout} s"
