"""A private, throw-away MongoDB stand-in for dev mode and the test suite.

No mongod can be installed here, so this runs nx-27017 (`pip install 'service[embedded]'`): the
MongoDB wire protocol served from SQLite, in memory or in one file. pymongo talks to it as to a
standalone MongoDB; it covers what the history needs, not all of MongoDB.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any

from pymongo import MongoClient

from service.dev.child_server import ChildServer
from service.dev.embedded_redis import free_port

log = logging.getLogger(__name__)

MODULE = "nx_27017"
LOG_NAME = "nx-27017.log"
RESIGNAL_AFTER = 0.5  # seconds; it exits within 0.2 s of a SIGTERM that reaches it
# nx-27017 0.8.1 (neosqlite 1.17) applies most updates of an existing document in SQL, and there
# it stores a datetime as the string "2026-01-10 12:00:00" and a pushed sub-document as a JSON
# string: `$set`/`$max` of `updated_at` would break every sort and range on it. Its Python path
# stores both right, so the server starts with updates routed there (reads stay in SQL).
BOOT = """
from neosqlite.collection.query_helper import QueryHelper
if not hasattr(QueryHelper, "_can_use_sql_updates"):
    raise SystemExit("neosqlite changed: review the update patch in service/dev/embedded_mongo.py")
QueryHelper._can_use_sql_updates = lambda *args, **kwargs: False
from nx_27017 import main
main()
"""


def find_nx_server() -> list[str] | None:
    """The command that runs nx-27017 from this Python's environment, patched (see BOOT)."""
    # Not its console script, which cannot take the patch, nor `-m`: the package has no __main__.
    if importlib.util.find_spec(MODULE) is None:
        return None
    return [sys.executable, "-c", BOOT]


class EmbeddedMongo(ChildServer):
    """An nx-27017 child process on a free loopback port. `start()`, then `stop()`.

    `path=None` keeps the data in memory, separate for each database name, gone at stop or restart.
    A path names a SQLite file, which the caller owns and which outlives `restart()` and `stop()`;
    every database name shares it (`other.jobs` is `app.jobs`).
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        database: str = "app",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(extra_args)
        self.path = path
        self.database = database
        self.command: list[str] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{self.database}"

    @property
    def log_path(self) -> str | None:
        return os.path.join(self._dir.name, LOG_NAME) if self._dir else None

    def start(self, timeout: float = 10.0) -> EmbeddedMongo:
        self.command = find_nx_server()
        if self.command is None:
            raise RuntimeError("nx-27017 is not installed: pip install 'service[embedded]'")
        self.port = self.port or free_port()
        workdir = self._workdir("service-mongo-")
        # Absolute, so a file named "memory" is a file, and the cwd below does not move it.
        database = os.path.abspath(self.path) if self.path else "memory"
        args = [
            *self.command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            database,
            # The defaults are /tmp/nx_27017.pid, shared by every instance (a second one refuses
            # to start while the first runs), and /tmp/nx_27017.log.
            "--pid-file",
            os.path.join(workdir, "nx-27017.pid"),
            # It logs to stderr and to --log-file alike: keep the stderr copy, which also holds a
            # traceback if it dies before logging is set up.
            "--log-file",
            os.devnull,
            *self.extra_args,
        ]
        with open(os.path.join(workdir, LOG_NAME), "ab") as log_file:
            # Its own session: a terminal's Ctrl-C must not stop it before its clients.
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        # A TCP probe first: a pymongo client refused once waits longer before its next try than
        # the server takes to start.
        deadline = time.monotonic() + timeout
        while not self._listening():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nx-27017 did not listen on {self.port} within {timeout}s")
            time.sleep(0.02)
        remaining_ms = max(deadline - time.monotonic(), 0.5) * 1000
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=remaining_ms, connectTimeoutMS=remaining_ms
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()
        self._check_alive()  # The ping could have reached another server on a reused port.

    def _listening(self) -> bool:
        self._check_alive()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"nx-27017 exited with {self._process.returncode}: {self._log_tail()}"
            )

    def _log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not os.path.exists(self.log_path):
            return "(no log)"
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return " | ".join(line.strip() for line in file.readlines()[-lines:]) or "(empty log)"

    def _terminate(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Its SIGTERM handler raises SystemExit wherever the main thread is; now and then that
        # is a weakref callback, which swallows it, and the server runs on. A second SIGTERM
        # ends it; SIGKILL is the last resort.
        for wait in (RESIGNAL_AFTER, timeout):
            process.terminate()
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass
        log.warning("nx-27017 ignored SIGTERM twice: killing it")
        process.kill()
        process.wait()

    def stop(self) -> None:
        self._terminate()
        self._remove_workdir()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start on the same port (for fault tests). Only a file database keeps data."""
        self._terminate()
        self.start(timeout)
