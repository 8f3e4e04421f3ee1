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
import redis.asyncio.sentinel as aiosentinel
import redis.retry
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from service.config import constants
from service.config.settings import RedisTarget
from service.net.deadline import before
from service.store import lua


def _options(target: RedisTarget, socket_timeout: float, retry: Any) -> dict[str, Any]:
    """A client's connection options: database, credentials, timeouts and TLS. `retry`: none
    (redis-py 8's client retries a failed connection ten times, with backoff: a minute
    before a refused TLS handshake is reported; the callers here decide when to retry)."""
    options: dict[str, Any] = {
        "retry": retry,
        "db": target.db,
        "username": target.username,
        "password": target.password.reveal() if target.password is not None else None,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": constants.REDIS_CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }
    if target.ssl:
        tls = target.tls
        options |= {
            "ssl": True,
            "ssl_ca_certs": tls.ca_file,
            "ssl_certfile": tls.cert_file,
            "ssl_keyfile": tls.key_file,
            "ssl_cert_reqs": "required" if tls.verify else "none",
            "ssl_check_hostname": tls.verify,
        }
    return options


def _sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """How the Sentinels themselves are reached (plain connections, their own password)."""
    password = target.sentinel_password
    return {
        "socket_timeout": constants.REDIS_CONNECT_TIMEOUT,
        "socket_connect_timeout": constants.REDIS_CONNECT_TIMEOUT,
        "password": password.reveal() if password is not None else None,
    }


def connect(target: RedisTarget) -> redis.Redis:
    """A synchronous client that fails fast (workers, start-up checks); its socket timeout
    stays above the workers' longest blocking wait. Through Sentinel, each new connection
    goes to the primary Sentinel names now: after a failover the client follows it."""
    options = _options(  # its socket timeout is above the longest BLPOP wait
        target, constants.WORKER_SOCKET_TIMEOUT, redis.retry.Retry(NoBackoff(), 0)
    )
    if target.sentinels:
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=_sentinel_options(target)
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.sentinel_master, **options
        )
        return client
    return redis.Redis(host=target.host, port=target.port, **options)


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


class _SentinelConnection(_TimerBoundWrites, _CPacking, aiosentinel.SentinelManagedConnection):
    pass


class _SentinelSSLConnection(
    _TimerBoundWrites, _CPacking, aiosentinel.SentinelManagedSSLConnection
):
    pass


def connect_async(
    target: RedisTarget,
    max_connections: int | None = None,
    socket_timeout: float = constants.REDIS_SOCKET_TIMEOUT,
) -> aioredis.Redis:
    """A client that fails fast: a dead or stalled Redis costs seconds, never a hang.
    `max_connections`: its pool's size (redis-py's default, 100, answers "Too many
    connections" to the 101st command in flight at once). `socket_timeout`: above the
    longest block, for a client that blocks in reads."""
    options = _options(target, socket_timeout, AsyncRetry(NoBackoff(), 0))
    if max_connections is not None:
        options["max_connections"] = max_connections
    if target.sentinels:
        sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=_sentinel_options(target)
        )
        kind = _SentinelSSLConnection if target.ssl else _SentinelConnection
        options.pop("ssl", None)
        client: aioredis.Redis = sentinel.master_for(
            target.sentinel_master, connection_class=kind, **options
        )
        return client
    options.pop("ssl", None)
    pool = aioredis.ConnectionPool(
        host=target.host,
        port=target.port,
        connection_class=_SSLConnection if target.ssl else _Connection,
        **options,
    )
    return aioredis.Redis.from_pool(pool)


class NotReplicated(redis.RedisError):
    """DURABILITY=replicated: a write ran on the primary but fewer replicas than required
    confirmed it within the timeout (WAIT). It is there, and may yet reach them."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"written on the primary, confirmed by {acked} of the {wanted} replicas required "
            f"within {timeout_ms} ms"
        )
        self.acked = acked
        self.wanted = wanted


def read_only(exc: Exception) -> bool:
    """A demoted primary (now a replica) refused a write: reconnect, to the new primary."""
    return isinstance(exc, redis.ReadOnlyError)


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

    With `replicas` (DURABILITY=replicated: how many, and the timeout in ms) a script call is
    followed, on the same connection and in the same write, by WAIT, which covers the writes
    that connection made; fewer confirmations raise NotReplicated after the script ran.
    """

    def __init__(self, client: aioredis.Redis, replicas: tuple[int, int] | None = None) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._idle: list[aioredis.Connection] = []
        self.version: lua.Version | None = None  # the server's, once read
        self.replicas = replicas

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
        wait = self.replicas if args[0] == "EVALSHA" else None
        acked = 0
        try:
            if wait is None:
                await conn.send_packed_command(conn.pack_command(*args))
                reply = await self._read(conn)
            else:
                await conn.send_packed_command(conn.pack_commands([args, ("WAIT", *wait)]))
                reply = await self._read_or_error(conn)
                acked = await self._read(conn)
                if isinstance(reply, redis.ResponseError):
                    raise reply
        except redis.ReadOnlyError as exc:  # a demoted primary: this connection is done
            await conn.disconnect(nowait=True)
            await self._pool.release(conn)
            raise redis.ConnectionError(f"Redis is read-only now (a replica): {exc}") from exc
        except redis.ResponseError:
            self._idle.append(conn)  # Redis answered (NOSCRIPT, OOM...): the connection is fine
            raise
        except BaseException:
            await conn.disconnect(nowait=True)  # usually done by redis-py already
            await self._pool.release(conn)
            raise
        self._idle.append(conn)
        if wait is not None and acked < wait[0]:
            raise NotReplicated(acked, *wait)
        return reply

    async def _read_or_error(self, conn: aioredis.Connection) -> Any:
        """A reply, or the error Redis answered (the WAIT's reply is still to read)."""
        try:
            return await self._read(conn)
        except redis.ReadOnlyError:
            raise
        except redis.ResponseError as exc:
            return exc

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
