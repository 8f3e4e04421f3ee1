"""Every failure the API knows, as a precise status and `{"error": {code, message, details}}`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.config import constants


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return JSONResponse({"error": body}, self.status, headers=self.headers)


def retry_later() -> dict[str, str]:
    """The headers of an answer that asks the client to try again later (a 429 or 503)."""
    return {"Retry-After": str(constants.RETRY_AFTER_SECONDS)}


def clip(text: str) -> str:
    """`text`, or its start and its length when it is longer than ERROR_TEXT_MAX_CHARS: an
    error never echoes a huge input (a 600 KB key) back."""
    limit = constants.ERROR_TEXT_MAX_CHARS
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# How a 422 that lists errors reads, for the OpenAPI document.
LISTED_ERRORS_DOC = (
    f"`details.errors` lists the first {constants.LISTED_ERRORS} errors (each field name and "
    f"message clipped to {constants.ERROR_TEXT_MAX_CHARS} characters), "
    "`details.error_count` counts them all."
)


class Problems:
    """The errors found in one request, each naming its field, answered at once as one 422:
    every error counted, the first LISTED_ERRORS listed (their text clipped), so the reply
    stays small however many there are."""

    __slots__ = ("count", "listed")

    def __init__(self) -> None:
        self.listed: list[dict[str, str]] = []
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def append(self, problem: dict[str, str]) -> None:
        """One error: `{"field", "message"}`."""
        if len(self.listed) < constants.LISTED_ERRORS:
            self.listed.append(
                {"field": clip(problem["field"]), "message": clip(problem["message"])}
            )
        self.count += 1

    def extend(self, problems: Iterable[dict[str, str]], count: int) -> None:
        """`count` errors, `problems` lazily: those past the listed ones are never built."""
        room = max(constants.LISTED_ERRORS - len(self.listed), 0)
        before = self.count
        for problem in itertools.islice(problems, room):
            self.append(problem)
        self.count = before + count

    def error(
        self, code: str, what: str, after: str = "", details: Mapping[str, Any] | None = None
    ) -> ApiError:
        """The 422: `<count> <what>`, how many are listed when not all are, then `after`;
        `details`: any besides `errors` and `error_count`."""
        message = f"{self.count} {what}"
        if self.count > len(self.listed):
            message += f"; the first {len(self.listed)} are listed"
        listed = {"errors": self.listed, "error_count": self.count}
        return ApiError(422, code, message + after, {**listed, **(details or {})})


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in our error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers).response()


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: a generic 500 in our error shape. Nothing about the exception
    reaches the client; Starlette re-raises it afterwards, so the server logs its traceback."""
    return ApiError(500, "internal_error", "internal server error").response()
