"""Redis clients that fail fast: blocking and asyncio clients from a target, a direct path for
the API's script calls, and a script handle that loads itself on NOSCRIPT."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import RedisTarget
from service.net.deadline import before
from service.store import lua


def connect(target: RedisTarget) -> redis.Redis:
    """A synchronous client that fails fast (workers, start-up checks); its socket timeout
    stays above the workers' longest blocking wait."""
    return redis.Redis.from_url(
        target.url,
        socket_timeout=constants.WORKER_SOCKET_TIMEOUT,  # above the longest BLPOP wait
        socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
    )


def out_of_memory(exc: Exception) -> bool:
    """Whether Redis refused a command or script for want of memory (`maxmemory`, noeviction):
    Redis 7 refuses a flagged script whole with OOM, Redis 6.2 wraps the refused command in a
    script error."""
    if isinstance(exc, redis.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and "used memory > 'maxmemory'" in str(exc)


class _CPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous connections already do; its
    asyncio connections pack in Python, several times slower for a publish's arguments and
    for every job in a batch. The bytes are the same."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'CONFIG GET' and the like: one argument per word
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.DataError(str(exc)) from None


class _TimerBoundWrites:
    """redis-py bounds every write by `socket_timeout` with asyncio.wait_for, which runs the
    write in a new task: a tenth of a publish request's CPU, and a loop iteration.

    A write can only wait when the transport's buffer passes its high-water mark (64 KiB):
    before a command the buffer is empty (the previous reply was read, or the connection was
    dropped), so a smaller command never waits and needs no timer. A larger one (a big batch)
    keeps redis-py's bounded write. The health check's PING runs first, under the timeout."""

    socket_timeout: float | None
    SMALL = 16 * 1024  # bytes: well under the high-water mark

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        send = super().send_packed_command  # type: ignore[misc]
        if check_health:
            await super().check_health()  # type: ignore[misc]
        if not isinstance(command, list) or sum(map(len, command)) > self.SMALL:
            return await send(command, False)  # type: ignore[no-any-return]
        # With no socket_timeout redis-py writes inline; the connection serves one command at
        # a time, so the timeout is set aside for this call only.
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            await send(command, False)
        finally:
            self.socket_timeout = timeout


class _Connection(_TimerBoundWrites, _CPacking, aioredis.Connection):
    pass


class _SSLConnection(_TimerBoundWrites, _CPacking, aioredis.SSLConnection):
    pass


def connect_async(target: RedisTarget, max_connections: int | None = None) -> aioredis.Redis:
    """A client that fails fast: a dead or stalled Redis costs seconds, never a hang.
    `max_connections`: its pool's size (redis-py's default, 100, answers "Too many
    connections" to the 101st command in flight at once)."""
    return aioredis.Redis.from_url(
        target.url,
        max_connections=max_connections,
        socket_timeout=constants.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=constants.REDIS_CONNECT_TIMEOUT,
        health_check_interval=30,
        connection_class=_SSLConnection if target.ssl else _Connection,
    )


class Direct:
    """Commands on the API's hot path (publish, cancel), on connections kept here.

    A redis-py 8 client call wraps each command in a pool checkout under a lock, a probe of
    the connection, a retry closure and observability hooks: as much CPU as the rest of the
    Redis round trip (README, Performance). This keeps redis-py's connections (connect, AUTH,
    SELECT, TLS, the reply parser, the 30 s health check) and skips the rest: a connection
    taken from the client's pool stays checked out, in a list of idle ones, between commands
    (the client's `aclose()` still closes it: a pool closes the connections it lent too).

    A connection that fails is dropped (disconnected, given back to the pool). When it had
    been idle, Redis may have restarted or closed it meanwhile, so the command is sent once
    more on another (as redis-py's pool would find out before sending); a timeout is never
    repeated, since the command may have run.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._idle: list[aioredis.Connection] = []
        self.version: lua.Version | None = None  # the server's, once read

    async def server_version(self) -> lua.Version:
        """The server's version (INFO server, on the client: read once)."""
        self.version = await lua.server_version_async(self._client)
        return self.version

    async def call(self, *args: Any) -> Any:
        if self._idle:
            try:
                return await self._call(self._idle.pop(), args)
            except redis.ConnectionError:
                pass  # a stale connection: once more on another
        return await self._call(await self._pool.get_connection(), args)  # type: ignore[no-untyped-call]

    async def _call(self, conn: aioredis.Connection, args: tuple[Any, ...]) -> Any:
        try:
            await conn.send_packed_command(conn.pack_command(*args))
            reply = await self._read(conn)
        except redis.ResponseError:
            self._idle.append(conn)  # Redis answered (NOSCRIPT, OOM...): the connection is fine
            raise
        except BaseException:
            await conn.disconnect(nowait=True)  # usually done by redis-py already
            await self._pool.release(conn)
            raise
        self._idle.append(conn)
        return reply

    @staticmethod
    async def _read(conn: aioredis.Connection) -> Any:
        """The reply, within `socket_timeout`: redis-py's asyncio.timeout costs several times
        what a bare timer does (on expiry the read is cancelled, which drops the
        connection, and the error is redis-py's)."""
        timeout = conn.socket_timeout
        if timeout is None:
            return await conn.read_response()
        deadline = asyncio.get_running_loop().time() + timeout
        conn.socket_timeout = None  # the connection serves one command at a time
        try:
            return await before(deadline, conn.read_response(), lambda: _timed_out(conn))
        finally:
            conn.socket_timeout = timeout


def _timed_out(conn: aioredis.Connection) -> redis.TimeoutError:
    return redis.TimeoutError(f"Timeout reading from {conn.host}:{conn.port}")


class Script:
    """A Lua script run by EVALSHA on `Direct` (loaded on NOSCRIPT, as redis-py's Script), in
    the form its server runs (`lua.for_server`). A call's ARGV is the key prefix, then `args`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._forms: dict[lua.Version, tuple[str, str]] = {}

    def form(self, version: lua.Version) -> tuple[str, str]:
        """(source, sha) of the script for a server of `version`."""
        found = self._forms.get(version)
        if found is None:
            source = lua.for_server(self.source, version)
            sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            found = self._forms[version] = (source, sha)
        return found

    async def __call__(self, direct: Direct, args: Sequence[Any]) -> Any:
        source, sha = self.form(direct.version or await direct.server_version())
        try:
            return await direct.call("EVALSHA", sha, 0, constants.KEY_PREFIX, *args)
        except redis.exceptions.NoScriptError:
            await direct.call("SCRIPT", "LOAD", source)
            return await direct.call("EVALSHA", sha, 0, constants.KEY_PREFIX, *args)
