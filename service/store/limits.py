"""The limits of job types in Redis (see service/jobs/limit.py and _limits.lua): what the code
declares, written by every worker container at start, and what the API sets over it.

limit_config_key(type) holds `code` and `override`; a type with either is in LIMITED_KEY (the
claim script looks at no limit while that set is empty). `override` wins until deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from service.config import constants
from service.jobs.limit import Limit
from service.jobs.records import as_text
from service.jobs.registry import JobType


def declare(client: redis.Redis, job_types: Iterable[JobType]) -> None:
    """Write the code's limits of these job types (and remove those the code dropped): one
    pipeline, at a worker container's start. The API's overrides are left as they are."""
    with client.pipeline(transaction=True) as pipe:
        for job_type in job_types:
            key = constants.limit_config_key(job_type.name)
            if job_type.limit is None:
                pipe.hdel(key, "code")
            else:
                pipe.hset(key, "code", job_type.limit.encode())
                pipe.sadd(constants.LIMITED_KEY, job_type.name)
        pipe.execute()
    # A type left with neither code nor override is no longer limited.
    for job_type in job_types:
        if job_type.limit is None and not client.exists(constants.limit_config_key(job_type.name)):
            client.srem(constants.LIMITED_KEY, job_type.name)


@dataclass(frozen=True, slots=True)
class Usage:
    """A job type's limits as they apply now, and where they stand."""

    code: Limit | None
    override: Limit | None
    running: int  # leases held (attempts running under a concurrency limit), every key
    held: int  # jobs waiting for a concurrency slot, every key
    keys: int  # key values with a lease or a held job

    @property
    def effective(self) -> Limit | None:
        return self.override or self.code

    def as_json(self, job_type: str) -> dict[str, Any]:
        effective = self.effective
        return {
            "type": job_type,
            **(effective.as_json() if effective else Limit().as_json()),
            "source": "api" if self.override else "code" if self.code else None,
            "code": self.code.as_json() if self.code else None,
            "running": self.running,
            "held": self.held,
            "keys": self.keys,
        }


class Limits:
    """The API's view: read every type's limits, set or delete an override."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def names(self) -> list[str]:
        members = cast("set[bytes]", await self.client.smembers(constants.LIMITED_KEY))
        return sorted(as_text(member) for member in members)

    async def usage(self, job_type: str) -> Usage:
        config = cast(
            "list[bytes | None]",
            await self.client.hmget(constants.limit_config_key(job_type), "code", "override"),
        )
        code, override = (Limit.decode(one) if one else None for one in config)
        running = held = 0
        names: set[str] = set()
        for family, is_lease in (("limit_leases_key", True), ("limit_held_key", False)):
            pattern = constants.KEY_PREFIX + constants.KEY_FAMILIES[family] + job_type + ":*"
            async for key in self.client.scan_iter(match=pattern, count=1000):
                count = await (self._leases(key) if is_lease else self._held(key))
                if count:
                    names.add(as_text(key)[len(pattern) - 1 :])
                if is_lease:
                    running += count
                else:
                    held += count
        return Usage(code, override, running, held, len(names))

    async def _leases(self, key: bytes) -> int:
        count: int = await self.client.zcard(key)
        return count

    async def _held(self, key: bytes) -> int:
        """The jobs of a held set still waiting (an entry whose job went on by another way, a
        recheck or a cancel, stays until a freed slot skips it)."""
        ids = cast("list[bytes]", await self.client.zrange(key, 0, -1))
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(constants.job_key(as_text(job_id)), "status")
            statuses = await pipe.execute()
        return sum(status == b"scheduled" for status in statuses)

    async def put(self, job_type: str, limit: Limit) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(constants.limit_config_key(job_type), "override", limit.encode())
            pipe.sadd(constants.LIMITED_KEY, job_type)
            await pipe.execute()

    async def delete(self, job_type: str) -> bool:
        """Drop the override; whether there was one. The code's limit applies again."""
        key = constants.limit_config_key(job_type)
        removed: int = await self.client.hdel(key, "override")
        if not await self.client.exists(key):
            await self.client.srem(constants.LIMITED_KEY, job_type)
        return removed > 0
