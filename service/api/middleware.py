"""Pure ASGI middleware (BaseHTTPMiddleware would turn a 413 into a 500): API keys, body limits."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.console_session import CSRF_HEADER, SAFE_METHODS, Keys, cookie_of, same_origin
from service.api.errors import ApiError
from service.net.deadline import before

# What needs a key when API_KEYS (or API_READONLY_KEYS) is set: the jobs, and what tells about
# them (queue names, job types and counts), and the console's data. Liveness and readiness stay
# open for probes; the OpenAPI document (every payload schema) follows OPENAPI_PUBLIC. The
# console's pages answer with the login page themselves (service/api/console.py).
PROTECTED = (
    "/jobs",
    "/queues",
    "/dead",
    "/schedules",
    "/limits",
    "/backlog",
    "/metrics",
    "/console/api/",
)
OPENAPI = "/openapi.json"


class ApiKeyAuth:
    """On the PROTECTED paths (and `/openapi.json` unless `openapi_public`) when keys are set:
    `Authorization: Bearer <key>` or a console session cookie, else 401; a read-only key (or
    session) on anything but GET/HEAD/OPTIONS, 403 `read_only_key`; a cookie-authenticated change
    without its CSRF token or from another origin, 403 `csrf_failed`."""

    def __init__(self, app: ASGIApp, keys: Keys, openapi_public: bool) -> None:
        self.app = app
        self.keys = keys
        self.protected = PROTECTED if openapi_public else (*PROTECTED, OPENAPI)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.required:
            return await self.app(scope, receive, send)
        if not scope["path"].startswith(self.protected):
            return await self.app(scope, receive, send)
        refused = self.refusal(dict(scope["headers"]), scope["method"].encode(), scope["scheme"])
        if refused is None:
            return await self.app(scope, receive, send)
        await refused.response()(scope, receive, send)

    def refusal(self, headers: dict[bytes, bytes], method: bytes, scheme: str) -> ApiError | None:
        """Why this request may not pass, or None."""
        authorization = headers.get(b"authorization")
        cookie = cookie_of(headers) if authorization is None else None
        if authorization is not None:
            role = self.keys.bearer(authorization)
        elif cookie is not None:
            identity = self.keys.session(cookie)
            role = identity.role if identity is not None else None
        else:
            role = None
        if role is None:
            message = "missing or invalid API key: send Authorization: Bearer <key>"
            www = {"WWW-Authenticate": 'Bearer realm="jobs"'}
            return ApiError(401, "unauthorized", message, headers=www)
        if method in SAFE_METHODS:
            return None
        if cookie is not None and not (
            same_origin(headers, scheme)
            and self.keys.csrf_ok(cookie, headers.get(CSRF_HEADER, b""))
        ):
            message = "a console action needs its X-CSRF-Token header, from the console's origin"
            return ApiError(403, "csrf_failed", message)
        if role == "read":
            message = "this key is read-only (API_READONLY_KEYS): it can read but change nothing"
            return ApiError(403, "read_only_key", message)
        return None

    def allows(self, headers: dict[bytes, bytes]) -> bool:
        """The fast path's check (a POST with a bearer key): no keys are set, or a full key."""
        if not self.keys.required:
            return True
        return self.keys.bearer(headers.get(b"authorization", b"")) == "full"


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
