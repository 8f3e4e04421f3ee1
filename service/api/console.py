"""The web console at /console: a few static files (service/api/console/, no build step) and
the JSON it needs beyond the API's own endpoints, which its pages call directly.

Pages are served only to a valid session (or to anyone when no key is set); anyone else gets
the login page, which trades the API key for a signed session cookie (console_session.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api import console_data
from service.api.console_session import COOKIE, SESSION_SECONDS, Keys, cookie_of, same_origin
from service.api.errors import ApiError, JSONResponse
from service.api.submit import read_json
from service.config import queues
from service.jobs import records

FILES = Path(__file__).parent / "console"
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css", ".js": "text/javascript"}
ASSETS = {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in FILES.iterdir() if p.suffix in TYPES}
# No inline script or style, no other origin: injected markup could run nothing.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _keys(request: Request) -> Keys:
    keys: Keys = request.app.state.keys
    return keys


def _signed_in(request: Request) -> bool:
    keys = _keys(request)
    cookie = cookie_of({k.lower().encode(): v.encode() for k, v in request.headers.items()})
    return not keys.required or (cookie is not None and keys.session(cookie) is not None)


def _file(name: str) -> Response:
    body, media_type = ASSETS[name]
    return Response(body, media_type=media_type, headers=HEADERS)


async def page(request: Request) -> Response:
    return _file("index.html" if _signed_in(request) else "login.html")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS or name.endswith(".html"):
        raise ApiError(404, "not_found", f"no console file {name!r}")
    return _file(name)


def _origin_checked(request: Request) -> None:
    headers = {k.lower().encode(): v.encode() for k, v in request.headers.items()}
    if not same_origin(headers, request.url.scheme):
        raise ApiError(403, "csrf_failed", "a console login must come from the console's origin")


async def login(request: Request) -> Response:
    """`{"key": "..."}` -> 204 with the session cookie; a wrong key, 401."""
    _origin_checked(request)
    body = await read_json(request)
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key:
        raise ApiError(422, "invalid_body", 'expected {"key": "<API key>"}')
    cookie = _keys(request).open_session(key.encode())
    if cookie is None:
        raise ApiError(401, "unauthorized", "this is not one of the API's keys")
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    _origin_checked(request)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def session(request: Request) -> Response:
    """The page's identity: its role and CSRF token, and what the service has configured."""
    keys = _keys(request)
    headers = {k.lower().encode(): v.encode() for k, v in request.headers.items()}
    cookie = cookie_of(headers)
    identity = keys.session(cookie) if cookie is not None else None
    if identity is not None:
        role, csrf = identity.role, keys.csrf(identity.cookie or "")
    else:  # no key set (anyone may act), or a bearer key (which needs no CSRF token)
        role = keys.bearer(headers.get(b"authorization", b"")) or "full"
        csrf = ""
    return JSONResponse(
        {
            "role": role,
            "csrf": csrf,
            "auth": keys.required,
            "history": request.app.state.mongo is not None,
            "redis_search_limit": console_data.REDIS_SEARCH_PER_LIST,
        }
    )


def _queue_names(request: Request) -> list[str]:
    state = request.app.state
    return queues.served(state.registry.queues(state.settings.queue_name))


async def overview(request: Request) -> Response:
    store = request.app.state.store
    listed = await store.queues(_queue_names(request))
    return JSONResponse(await console_data.overview(store.client, listed, request.app.state.mongo))


async def workers(request: Request) -> Response:
    found = await console_data.workers(request.app.state.store.client)
    return JSONResponse({"workers": found, "now": records.utc_iso()})


async def detail(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    found = None
    if records.valid_id(job_id):
        found = await console_data.detail(request.app.state.store.client, job_id)
    if found is None:
        raise ApiError(404, "job_not_found", "Redis no longer has this job's details")
    return JSONResponse(found)


async def search(request: Request) -> Response:
    """Jobs in Redis (no MongoDB): a bounded read, see console_data.search_redis."""
    given: dict[str, Any] = {k: v for k, v in request.query_params.items() if v}
    store = request.app.state.store
    names = [q["name"] for q in await store.queues(_queue_names(request))]
    found = await console_data.search_redis(store.client, names, given)
    return JSONResponse({"jobs": found[: console_data.REDIS_SEARCH_PER_LIST]})


routes: list[BaseRoute] = [
    Route("/console", page, methods=["GET"]),
    Route("/console/", page, methods=["GET"]),
    Route("/console/static/{name}", asset, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", logout, methods=["POST"]),
    Route("/console/api/session", session, methods=["GET"]),
    Route("/console/api/overview", overview, methods=["GET"]),
    Route("/console/api/workers", workers, methods=["GET"]),
    Route("/console/api/jobs", search, methods=["GET"]),
    Route("/console/api/jobs/{job_id}", detail, methods=["GET"]),
]
