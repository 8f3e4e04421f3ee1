"""What Redis's own configuration can lose, checked when the service starts.

A 202 is only as durable as Redis: an eviction policy other than `noeviction` deletes job keys
when memory fills, and persistence decides what a Redis crash loses. DURABILITY=relaxed (the
default) warns about such settings; DURABILITY=strict refuses them: it needs `noeviction` and
the append-only file with `appendfsync always`, under which Redis writes and fsyncs a
publish before it replies, so a 202 means the job is on disk. (`WAITAOF`, which would allow
`everysec` plus a per-request wait, needs Redis 7.2; ours here is 7.0.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("service.store.durability")
RECHECK_SECONDS = 30.0  # strict API: how long a passed check is trusted (CONFIG can change)


@dataclass(frozen=True, slots=True)
class Persistence:
    maxmemory_policy: str
    appendonly: bool
    appendfsync: str
    save: str  # RDB snapshot rules; '' = none

    @classmethod
    def from_config(cls, config: dict[Any, Any]) -> Persistence:
        text = {_text(k): _text(v) for k, v in config.items()}
        return cls(
            text.get("maxmemory-policy", ""),
            text.get("appendonly", "no") == "yes",
            text.get("appendfsync", ""),
            text.get("save", ""),
        )

    def risks(self) -> list[str]:
        """How this configuration can lose accepted jobs (empty: as safe as Redis gets)."""
        found = []
        if self.maxmemory_policy != "noeviction":
            found.append(
                f"maxmemory-policy is {self.maxmemory_policy!r}: when memory fills, Redis "
                "deletes keys, jobs included; set it to 'noeviction'"
            )
        if not self.appendonly and not self.save:
            found.append(
                "persistence is off (appendonly no, no save rules): a Redis restart loses "
                "every queued job; set appendonly yes"
            )
        elif not self.appendonly:
            found.append(
                f"only RDB snapshots (save {self.save!r}): a Redis crash loses the jobs "
                "accepted since the last snapshot; set appendonly yes"
            )
        elif self.appendfsync == "no":
            found.append(
                "appendfsync no: the OS decides when the append-only file reaches the disk "
                "(about 30 s of jobs at risk); use everysec or always"
            )
        return found

    def strict_problems(self) -> list[str]:
        """Why DURABILITY=strict refuses this configuration."""
        found = [risk for risk in self.risks() if "maxmemory-policy" in risk]
        if not (self.appendonly and self.appendfsync == "always"):
            found.append(
                "DURABILITY=strict needs appendonly yes with appendfsync always (now: "
                f"appendonly {'yes' if self.appendonly else 'no'}, appendfsync "
                f"{self.appendfsync or '?'}), so that a 202 means the job is on disk"
            )
        return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync", "save")


def read(client: redis.Redis) -> Persistence | None:
    """Redis's persistence settings, in one round trip; None where CONFIG is disabled (many
    managed Redis) or denied to our user (the least-privilege ACL rule withholds it: CONFIG
    GET reads secrets such as `masterauth`)."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for name in _SETTINGS:
                pipe.config_get(name)
            return _merged(pipe.execute())
    except redis.ResponseError:
        return None


async def read_async(client: Any) -> Persistence | None:
    try:
        async with client.pipeline(transaction=False) as pipe:
            for name in _SETTINGS:
                pipe.config_get(name)
            return _merged(await pipe.execute())
    except redis.ResponseError:
        return None


def _merged(replies: list[dict[Any, Any]]) -> Persistence:
    return Persistence.from_config({k: v for reply in replies for k, v in reply.items()})


def problems_at_start(client: redis.Redis, strict: bool) -> list[str]:
    """Warn about what Redis can lose; return what strict mode refuses (nothing when relaxed).

    An unreachable Redis is not a problem here: the service starts, not ready, and (strict
    API) checks again before it accepts a job.
    """
    try:
        found = read(client)
    except redis.RedisError as exc:
        log.warning("cannot check Redis persistence yet (%s); will check when it answers", exc)
        return []
    if found is None:
        log.warning(
            "cannot read Redis's configuration (CONFIG GET is disabled on this server or "
            "denied to this user): persistence and eviction policy unchecked"
        )
        return (
            ["CONFIG GET is disabled or denied on this Redis: DURABILITY=strict cannot verify it"]
            if strict
            else []
        )
    for risk in found.risks():
        log.warning("Redis can lose jobs: %s", risk)
    return found.strict_problems() if strict else []


class StrictGate:
    """DURABILITY=strict in the API: jobs are accepted only while Redis's configuration was
    seen to be strict within RECHECK_SECONDS; otherwise a 503 says why."""

    def __init__(self) -> None:
        self.passed_at = -RECHECK_SECONDS
        self.problems: list[str] = []

    async def check(self, client: Any) -> list[str]:
        if time.monotonic() - self.passed_at < RECHECK_SECONDS:
            return []
        found = await read_async(client)
        if found is None:
            self.problems = [
                "CONFIG GET is disabled or denied on this Redis: durability cannot be verified"
            ]
        else:
            self.problems = found.strict_problems()
        if not self.problems:
            self.passed_at = time.monotonic()
        return self.problems
