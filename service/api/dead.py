"""The dead-letter queue over HTTP: failed jobs (RQ's failed registries), listed, retried."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

routes: list[Route] = []


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes."""
    return {}
