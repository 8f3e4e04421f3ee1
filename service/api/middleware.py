"""Pure ASGI middleware (BaseHTTPMiddleware would turn a 413 into a 500): API keys, body limits."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError
from service.config.settings import Secret
from service.net import apikeys
from service.net.deadline import before

# What needs a key when API_KEYS is set: the jobs, and what tells about them (queue names, job
# types and counts). Liveness and readiness stay open for probes; the OpenAPI document (every
# payload schema) follows OPENAPI_PUBLIC.
PROTECTED = ("/jobs", "/queues", "/dead", "/schedules", "/limits", "/backlog", "/metrics")
OPENAPI = "/openapi.json"


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on the PROTECTED paths (and `/openapi.json` unless
    `openapi_public`) when API_KEYS is set; 401 otherwise."""

    def __init__(self, app: ASGIApp, keys: tuple[Secret, ...], openapi_public: bool) -> None:
        self.app = app
        self.keys = [k.reveal().encode() for k in keys]
        self.protected = PROTECTED if openapi_public else (*PROTECTED, OPENAPI)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith(self.protected):
            return await self.app(scope, receive, send)
        if self.allows(dict(scope["headers"])):
            return await self.app(scope, receive, send)
        message = "missing or invalid API key: send Authorization: Bearer <key>"
        response = ApiError(
            401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="jobs"'}
        ).response()
        await response(scope, receive, send)

    def allows(self, headers: dict[bytes, bytes]) -> bool:
        """No keys are set, or the request carries one of them."""
        return apikeys.allows(self.keys, headers.get(b"authorization", b""))


class BodyLimit:
    """The request body's size and time limits, and what happens to a body left unread.

    - 413 for a body over `limit` bytes: a declared one at once, unread; a streamed (chunked)
      one as soon as the running count passes the limit, so at most `limit` bytes (plus one
      message) are ever held. A streamed body raises ApiError from `receive`; the app's
      ApiError handler answers.
    - 408 when the body has not all arrived `timeout` seconds after the headers did, however
      slowly it trickles in.

    An answer sent before the body was all read ends the connection (service/api/protocol.py
    lingers, then closes): the rest of a body that may have no end is never read.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        unread = declared not in (None, b"0") or b"transfer-encoding" in headers
        received = 0
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited_receive() -> Message:
            nonlocal received, unread
            if not unread:  # the body is in: from now on only a disconnect can come
                return await receive()
            message = await before(deadline, receive(), self.too_slow)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.too_large()
                unread = message.get("more_body", False)
            return message

        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.too_large().response()(scope, receive, send)
        await self.app(scope, limited_receive, send)

    def too_large(self) -> ApiError:
        message = f"request body is larger than the limit of {self.limit} bytes (MAX_BODY_BYTES)"
        return ApiError(413, "body_too_large", message)

    def too_slow(self) -> ApiError:
        message = (
            f"the request body did not arrive within {self.timeout:g} s (REQUEST_BODY_TIMEOUT)"
        )
        return ApiError(408, "request_timeout", message)
