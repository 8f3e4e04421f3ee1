"""Query parameters shared by the list endpoints (GET /dead, GET /jobs): each problem is
collected, named, and answered at once with a 422."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from service.api.errors import Problems
from service.config import constants

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def instant(name: str, value: str | None, problems: Problems) -> float | None:
    """An RFC 3339 time with a timezone, as epoch seconds; in UTC within years 1 to 9999,
    which Python's datetime (and so MongoDB's driver) can represent."""
    if value is None:
        return None
    # A '+' sent unencoded in a query string arrives as a space: read it as the '+' it was.
    value = re.sub(r" (\d\d:\d\d)$", r"+\1", value)
    message = "expected an RFC 3339 time with a timezone: 2026-11-29T10:00:00Z"
    if _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper()).astimezone(UTC).timestamp()
        except ValueError:
            pass
        except OverflowError:  # 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
            message = "expected a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    problems.append({"field": name, "message": message})
    return None


def limit(value: str | None, problems: Problems) -> int:
    if value is None:
        return constants.LIST_DEFAULT_LIMIT
    # Digits, and a few only: int() refuses a string of over 4300 digits (a ValueError).
    if value.isascii() and value.isdigit() and len(value) <= 9:
        number = int(value)
        if 1 <= number <= constants.LIST_MAX_LIMIT:
            return number
    problems.append(
        {"field": "limit", "message": f"expected a whole number 1-{constants.LIST_MAX_LIMIT}"}
    )
    return constants.LIST_DEFAULT_LIMIT


def cursor(value: str | None, pattern: re.Pattern[str], problems: Problems) -> tuple[str, str]:
    """A cursor's two parts, `<position>_<job id>`, once it matches `pattern` (the OpenAPI
    document's); ("", "") when there is none or, with a problem noted, when it does not."""
    if value is None:
        return "", ""
    if not pattern.fullmatch(value):
        problems.append({"field": "cursor", "message": "not a cursor this API returned"})
        return "", ""
    position, job_id = value.split("_", 1)
    return position, job_id


def wait_seconds(value: str | None, problems: Problems) -> float:
    """`?wait=`: seconds to wait for a job to end, a number 0-MAX_WAIT_SECONDS (0 if absent)."""
    if value is None:
        return 0.0
    limit = constants.MAX_WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if 0 <= seconds <= limit:  # neither nan nor inf
        return seconds
    problems.append({"field": "wait", "message": f"expected a number of seconds 0-{limit}"})
    return 0.0
