"""MAX_CONNECTIONS: how many client connections a server keeps open, and which it closes first.

Every connection is a file descriptor. A process out of them accepts nothing, not even its
orchestrator's probe, and neither uvicorn nor the standard library's HTTP server bounds how
many idle sockets a client may hold open until a timeout frees them. Both our servers (the
API, the worker's health server) keep at most MAX_CONNECTIONS open, and at start make sure the
process may open that many files and more (`fit_file_limit`).

At the limit a new connection takes the place of one that has waited longest for a request
(as nginx reuses its idle keep-alive connections when it runs out): first one that has sent
nothing of a request yet (a fresh or a keep-alive connection), then one still sending its head
or lingering after an early answer. Closing the new connection instead would let a client
holding idle sockets lock out every probe and every other client until they time out; a
connection with nothing sent loses nothing when it is closed (an HTTP client must expect an
idle connection to close and retries on a new one). A connection whose request is being
served is never closed: when all of them are, the new connection is refused.
"""

from __future__ import annotations

import logging
import math
import resource
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("service.net.connections")
C = TypeVar("C")
REPORT_EVERY = 10.0  # seconds: at most one warning this often while the limit is reached


class Connections(Generic[C]):
    """The open connections of one server, each idle, unserved (a head or a linger in
    progress) or serving a request. Thread-safe: the worker's health server has a thread per
    connection."""

    def __init__(self, limit: int, close: Callable[[C], object], server: str) -> None:
        self.limit = limit
        self._close = close  # how to close another connection to make room
        self._server = server  # for the log
        self._open: set[C] = set()
        # Insertion order is the order their wait began: the first is the one waiting longest.
        self._idle: dict[C, None] = {}
        self._unserved: dict[C, None] = {}
        self._lock = threading.Lock()
        self._evicted = self._refused = 0
        self._reported = -math.inf

    def opened(self, conn: C) -> bool:
        """A new connection, idle: True, or False when every open one is serving a request
        (then the caller closes it at once)."""
        victim = None
        with self._lock:
            if len(self._open) >= self.limit:
                victim = next(iter(self._idle), None)
                if victim is None:
                    victim = next(iter(self._unserved), None)
                if victim is None:
                    self._refused += 1
                    self._report()
                    return False
                self._forget(victim)
                self._evicted += 1
                self._report()
            self._open.add(conn)
            self._idle[conn] = None
        if victim is not None:
            self._close(victim)
        return True

    def idle(self, conn: C) -> None:
        """Waiting for a request, nothing of it received (after a response, say)."""
        with self._lock:
            if conn in self._open:
                self._unserved.pop(conn, None)
                self._idle.pop(conn, None)
                self._idle[conn] = None

    def began(self, conn: C) -> None:
        """An idle connection's request began to arrive."""
        with self._lock:
            if conn in self._idle:
                del self._idle[conn]
                self._unserved[conn] = None

    def unserved(self, conn: C) -> None:
        """Lingering after an early answer: nothing more of it will be served."""
        with self._lock:
            if conn in self._open:
                self._idle.pop(conn, None)
                self._unserved[conn] = None

    def serving(self, conn: C) -> None:
        """Its request's head is in: it is being served, never closed to make room."""
        with self._lock:
            self._idle.pop(conn, None)
            self._unserved.pop(conn, None)

    def closed(self, conn: C) -> None:
        with self._lock:
            self._forget(conn)

    def __len__(self) -> int:
        return len(self._open)

    def _forget(self, conn: C) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)
        self._unserved.pop(conn, None)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported < REPORT_EVERY:
            return
        log.warning(
            "%s: MAX_CONNECTIONS (%d) reached: since the last such line, %d connections "
            "waiting for a request closed to make room, %d new ones refused (every open one "
            "was being served)",
            self._server,
            self.limit,
            self._evicted,
            self._refused,
        )
        self._reported = now
        self._evicted = self._refused = 0


def fit_file_limit(max_connections: int, needed: int, why: str) -> str | None:
    """Make sure this process may open `needed` files: raise its soft RLIMIT_NOFILE toward the
    hard limit if it is lower; the problem, naming MAX_CONNECTIONS, if the hard one is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (
            f"MAX_CONNECTIONS={max_connections}: needs {needed} open files ({why}), above "
            f"this process's hard limit of {hard} (RLIMIT_NOFILE); lower MAX_CONNECTIONS or "
            "raise the limit (ulimit -Hn, docker run --ulimit nofile=..., systemd LimitNOFILE)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info(
        "open-file limit raised from %d to %d for MAX_CONNECTIONS=%d (%s)",
        soft,
        needed,
        max_connections,
        why,
    )
    return None
