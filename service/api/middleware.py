"""Pure ASGI middleware (BaseHTTPMiddleware would turn a 413 into a 500): API keys, body limit."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError
from service.settings import Secret

PROTECTED = ("/jobs", "/queues", "/dead")  # health, readiness and the OpenAPI document stay open


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on job endpoints when API_KEYS is set; 401 otherwise."""

    def __init__(self, app: ASGIApp, keys: tuple[Secret, ...]) -> None:
        self.app = app
        self.keys = [k.reveal().encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith(PROTECTED):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        valid = False
        for key in self.keys:  # compare with every key, in constant time: no early exit
            valid |= hmac.compare_digest(token.strip(), key)
        if scheme.lower() == b"bearer" and valid:
            return await self.app(scope, receive, send)
        message = "missing or invalid API key: send Authorization: Bearer <key>"
        response = ApiError(
            401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="jobs"'}
        ).response()
        await response(scope, receive, send)


class BodyLimit:
    """413 for a body over `limit` bytes, declared or streamed (chunked), before it is all read.

    A streamed body raises ApiError from `receive`; the app's ApiError handler answers 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large().response()(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> ApiError:
        message = f"request body is larger than the limit of {self.limit} bytes (MAX_BODY_BYTES)"
        return ApiError(413, "body_too_large", message)
