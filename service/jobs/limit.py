"""Limits per job type: at most N starts per period (`rate_limit="100/minute"`) and at most K
attempts running at once (`concurrency_limit=5`), global to every worker container, each per
value of a payload field when `limit_key` names one.

Declared in `@job(...)`, replaceable at run time through the API (PUT /limits/{type}) until the
override is deleted. Enforced by the CLAIM script (service/store/_limits.lua): a job over its
limit waits, parked in its queue's scheduled registry, without spending an attempt, and the
queue's other job types are claimed past it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A period by name, in seconds: one unit per rate, as Celery's "100/m" and Sidekiq's rates read.
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# N (1..999999) starts per period: the OpenAPI document states the same pattern.
RATE_PATTERN = r"^([1-9][0-9]{0,5})/(second|minute|hour|day)$"
KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # a top-level payload field
MAX_CONCURRENCY = 100_000
_RATE = re.compile(RATE_PATTERN)
_KEY = re.compile(KEY_PATTERN)


class LimitInvalid(ValueError):
    """A limit that cannot be applied: `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` starts in any `period` seconds."""

    count: int
    period: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """The rate `text` states: "20/second", "100/minute", "5/hour", "1000/day"."""
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        if not match:
            message = f"{text!r} is not N/period (N 1-999999; second, minute, hour or day)"
            raise LimitInvalid("rate_limit", message)
        return cls(int(match[1]), PERIODS[match[2]])

    def __str__(self) -> str:
        unit = next(name for name, seconds in PERIODS.items() if seconds == self.period)
        return f"{self.count}/{unit}"


@dataclass(frozen=True, slots=True)
class Limit:
    """A job type's limits; None: that limit does not apply. `key`: the payload field whose
    value gives each tenant its own window and slots ('' = one for the whole type)."""

    rate: Rate | None = None
    concurrency: int | None = None
    key: str = ""

    @classmethod
    def of(
        cls, rate_limit: str | None, concurrency_limit: int | None, limit_key: str | None
    ) -> Limit | None:
        """The limit these settings give (None when neither limit is set), or LimitInvalid."""
        rate = None if rate_limit is None else Rate.parse(rate_limit)
        if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool)
            or not isinstance(concurrency_limit, int)
            or not 1 <= concurrency_limit <= MAX_CONCURRENCY
        ):
            raise LimitInvalid(
                "concurrency_limit", f"{concurrency_limit!r}: must be 1..{MAX_CONCURRENCY}"
            )
        key = limit_key or ""
        if key and not _KEY.fullmatch(key):
            raise LimitInvalid("limit_key", f"{key!r} must name a top-level payload field")
        if rate is None and concurrency_limit is None:
            if key:
                raise LimitInvalid("limit_key", "applies only with a rate or concurrency limit")
            return None
        return cls(rate, concurrency_limit, key)

    def encode(self) -> str:
        """As the scripts read it: "rate/period/concurrency/key", 0 for none."""
        rate = self.rate or Rate(0, 1)
        return f"{rate.count}/{rate.period}/{self.concurrency or 0}/{self.key}"

    @classmethod
    def decode(cls, text: bytes | str) -> Limit | None:
        """What `encode` wrote; None for text it cannot read (another version wrote it)."""
        raw = text.decode() if isinstance(text, bytes) else text
        parts = raw.split("/", 3)
        try:
            count, period, concurrency = int(parts[0]), int(parts[1]), int(parts[2])
            key = parts[3]
        except (ValueError, IndexError):
            return None
        rate = Rate(count, period) if count > 0 and period in PERIODS.values() else None
        return cls(rate, concurrency or None, key)

    def as_json(self) -> dict[str, str | int | None]:
        return {
            "rate_limit": None if self.rate is None else str(self.rate),
            "concurrency_limit": self.concurrency,
            "limit_key": self.key or None,
        }
