"""Query parameters shared by the list endpoints (GET /dead, GET /jobs): each problem is
collected, named, and answered at once with a 422."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from service import constants
from service.api.errors import Problems


def or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's OpenAPI schema: an empty value (`?since=`) counts as not given."""
    return {"anyOf": [schema, {"const": ""}]}


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def instant(name: str, value: str | None, problems: Problems) -> float | None:
    """An RFC 3339 time with a timezone, as epoch seconds."""
    if value is None:
        return None
    # A '+' sent unencoded in a query string arrives as a space: read it as the '+' it was.
    value = re.sub(r" (\d\d:\d\d)$", r"+\1", value)
    if _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper()).timestamp()
        except ValueError:
            pass
    message = "expected an RFC 3339 time with a timezone: 2026-11-29T10:00:00Z"
    problems.append({"field": name, "message": message})
    return None


def limit(value: str | None, problems: Problems) -> int:
    if value is None:
        return constants.LIST_DEFAULT_LIMIT
    if value.isascii() and value.isdigit() and 1 <= int(value) <= constants.LIST_MAX_LIMIT:
        return int(value)
    problems.append(
        {"field": "limit", "message": f"expected a whole number 1-{constants.LIST_MAX_LIMIT}"}
    )
    return constants.LIST_DEFAULT_LIMIT
