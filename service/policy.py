"""Retry backoff: how long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BACKOFF_SECONDS = 7 * 24 * 3600


class Backoff(BaseModel):
    """`fixed`: `base` seconds every time; `exponential`: base, 2·base, 4·base … up to `cap`.

    With `jitter` (full jitter), the wait is drawn uniformly between 0 and that value, so
    retries of many jobs that failed together do not hit a recovering dependency at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fixed", "exponential"] = "exponential"
    base: float = Field(default=1.0, ge=0, le=MAX_BACKOFF_SECONDS)
    cap: float = Field(default=300.0, ge=0, le=MAX_BACKOFF_SECONDS)
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first run)."""
        if self.type == "fixed":
            ceiling = min(self.base, self.cap)
        else:
            ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, 60))
        return (rng or random).uniform(0, ceiling) if self.jitter else ceiling


IMMEDIATE = Backoff(type="fixed", base=0, jitter=False)
