"""`POST /jobs` in one ASGI layer, for the common case; every other request to the full stack.

A plain submission (a JSON body that arrives whole, a known job type with only a payload or
options, no Idempotency-Key, tracing off) is the request the API serves most. Through the
full stack (request metrics, body limits, API keys, then Starlette's middleware, router,
request and response objects) the layers cost it more than the validation and the publish
together (README, Performance). The same steps run inline, with the same pieces: the API-key
check and the body limits of service/api/middleware.py, `parse_jobs`, `Store.publish_soon`,
the request metrics.

Whatever this layer does not serve goes to the full stack, which checks everything again:
a request without a valid key or with a body too large (so the 401 or 413 come from there),
a body in several messages, a malformed or invalid one (the full app finds the same errors
and answers them in full), an idempotent submission, one that DURABILITY=strict refuses; the
body replayed when it was read. An error once the body is read (408, Redis down or full,
MAX_BACKLOG, a bug) is answered by the app's own exception handlers. Every answer is the one
the full stack would give.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import request_metrics, routes
from service.api.errors import ApiError
from service.api.middleware import ApiKeyAuth, BodyLimit
from service.api.submit import may_nest_too_deep, parse_jobs
from service.jobs import records
from service.net.deadline import before
from service.telemetry import tracing

JSON = b"application/json"


class FastSubmit:
    def __init__(self, full: ASGIApp, app: Starlette, auth: ApiKeyAuth, limits: BodyLimit) -> None:
        self.full = full  # the whole stack, for every request not served here
        self.app = app  # its state (store, registry, settings) and exception handlers
        self.auth = auth
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/jobs" or scope["method"] != "POST":
            return await self.full(scope, receive, send)
        headers = dict(scope["headers"])
        if not self._plain(headers):
            return await self.full(scope, receive, send)
        started = time.perf_counter()
        status, served = 500, True

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            deadline = asyncio.get_running_loop().time() + self.limits.timeout
            message = await before(deadline, receive(), self.limits.too_slow)
            job = _plain_job(message, self.app.state)
            if job is None or await self._not_durable():
                served = False  # the full stack answers, and counts it
                return await self.full(scope, _replay(message, receive), send)
            await self._publish(job, send_status)
        except Exception as exc:  # noqa: BLE001 - a 408, Redis down or full, a bug
            await self._answer_error(scope, receive, send_status, exc)
        finally:
            if served:
                request_metrics.answered("/jobs", "POST", status, time.perf_counter() - started)

    def _plain(self, headers: dict[bytes, bytes]) -> bool:
        """A request this layer may serve, as far as its headers tell."""
        if tracing.enabled() or b"idempotency-key" in headers:
            return False
        media_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        length = headers.get(b"content-length", b"")
        return (
            media_type == JSON
            and length.isdigit()
            and int(length) <= self.limits.limit
            and b"transfer-encoding" not in headers
            and self.auth.allows(headers)
        )

    async def _not_durable(self) -> bool:
        """DURABILITY=strict and Redis not seen strict lately: the full stack says why (503)."""
        state = self.app.state
        return state.strict is not None and bool(await state.strict.check(state.store.client))

    async def _publish(self, job: records.NewJob, send: Send) -> None:
        started = time.perf_counter()
        await self.app.state.store.publish_soon(job)
        request_metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        request_metrics.accepted([job])
        (view,) = await routes.answers(self.app.state.store, [job])
        content = orjson.dumps(view)
        headers = [
            (b"content-type", JSON),
            (b"content-length", str(len(content)).encode()),
            (b"location", f"/jobs/{job.id}".encode()),
        ]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _answer_error(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception
    ) -> None:
        """Answered by the app's handler for `exc`, as Starlette would: a known failure by
        its own handler; anything else (or a handler that re-raises) by the generic 500's,
        then re-raised for uvicorn to log."""
        handlers = self.app.exception_handlers
        request = Request(scope, receive)
        handler = next(handlers[t] for t in type(exc).__mro__ if t in handlers)
        try:
            if handler is handlers[Exception]:
                raise exc
            response = await handler(request, exc)
        except Exception as unexpected:
            response = await handlers[Exception](request, unexpected)
            await response(scope, receive, send)
            raise
        await response(scope, receive, send)


def _plain_job(message: Message, state: Any) -> records.NewJob | None:
    """The job, or None for a request the full stack must answer: a body not all in this
    message, malformed, nested deeper than the limit, invalid (an integer beyond 64 bits
    too: `parse_jobs` reads the body for them), or with an idempotency key."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    body: bytes = message.get("body", b"")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or may_nest_too_deep(body):
        return None  # read_json's depth check, and its answer
    try:
        ((job, options),) = parse_jobs(
            [value], state.registry, state.settings, batch=False, body=body
        )
    except ApiError:
        return None
    return None if options.idempotency_key is not None else job


def _replay(message: Message, receive: Receive) -> Receive:
    """`receive` with `message` given back first."""
    pending = [message]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
