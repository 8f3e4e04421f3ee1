"""The request span, as pure ASGI middleware; installed only while tracing is on.

Ours rather than opentelemetry-instrumentation-asgi: that package is still a beta (0.x), brings
the instrumentation framework along, and by default adds a span per ASGI send and receive; this
one makes the one span we need in a few lines, and is not even installed when tracing is off.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.telemetry import tracing


class TraceRequests:
    """One SERVER span per HTTP request, a child of an incoming `traceparent`; what the app
    does inside it (the enqueue span) nests below it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope["method"]
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.request_span(method, scope["path"], scope["headers"]) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = scope.get("route")  # set by Starlette's router once it matched
                tracing.set_response(span, method, status, getattr(route, "path", None))
