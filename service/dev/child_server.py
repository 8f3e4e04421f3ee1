"""A server that dev mode and the tests run as a child process: a loopback port, a temporary
directory of its own for its files, and its pid."""

from __future__ import annotations

import subprocess
import tempfile


class ChildServer:
    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.port = 0  # chosen at start unless set: then kept across restarts
        self.extra_args = extra_args  # appended to the server's command line
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _workdir(self, prefix: str) -> str:
        """The server's directory, made at the first start and kept until `_remove_workdir`."""
        self._dir = self._dir or tempfile.TemporaryDirectory(prefix=prefix)
        return self._dir.name

    def _remove_workdir(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
