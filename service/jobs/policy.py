"""Retry backoff: how long a failed job waits before its next attempt.

A plain dataclass, not a pydantic model: worker processes compute delays without importing
pydantic. The API still validates it with pydantic (a field of its request model), which reads
the ranges from the `Annotated` metadata and the unknown-field rule from `__pydantic_config__`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import orjson
from annotated_types import Interval

MAX_BACKOFF_SECONDS = 7 * 24 * 3600
BACKOFF_TYPES = ("fixed", "exponential")

Seconds = Annotated[float, Interval(ge=0, le=MAX_BACKOFF_SECONDS)]


@dataclass(frozen=True, slots=True)
class Backoff:
    """`fixed`: `base` seconds every time; `exponential`: base, 2·base, 4·base … up to `cap`.

    With `jitter` (full jitter), the wait is drawn uniformly between 0 and that value, so
    retries of many jobs that failed together do not hit a recovering dependency at once.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    type: Literal["fixed", "exponential"] = "exponential"
    base: Seconds = 1.0
    cap: Seconds = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        """The checks the API's validation makes, for policies built in Python (`@job`)."""
        if self.type not in BACKOFF_TYPES:
            raise ValueError(f"backoff type {self.type!r}: expected one of {BACKOFF_TYPES}")
        for name in ("base", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"backoff {name} {value!r}: expected a number of seconds")
            if not 0 <= value <= MAX_BACKOFF_SECONDS:
                raise ValueError(f"backoff {name} {value!r}: expected 0-{MAX_BACKOFF_SECONDS} s")
            object.__setattr__(self, name, float(value))  # 5 is stored as 5.0, as JSON reads it
        if not isinstance(self.jitter, bool):
            raise ValueError(f"backoff jitter {self.jitter!r}: expected true or false")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first run)."""
        if self.type == "fixed":
            ceiling = min(self.base, self.cap)
        else:
            ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, 60))
        return (rng or random).uniform(0, ceiling) if self.jitter else ceiling

    def to_json(self) -> str:
        """As a job stores it: `{"type":"exponential","base":1.0,"cap":300.0,"jitter":true}`."""
        fields = {"type": self.type, "base": self.base, "cap": self.cap, "jitter": self.jitter}
        return orjson.dumps(fields).decode()  # not asdict(), far slower: this runs per job

    @classmethod
    def from_json(cls, text: str | bytes) -> Backoff:
        return cls(**orjson.loads(text))


IMMEDIATE = Backoff(type="fixed", base=0, jitter=False)
