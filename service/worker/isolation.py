"""Running one job in a forked child, for job types registered with `isolated=True`."""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson

from service.context import JobContext


class IsolatedJobFailed(Exception):
    """The handler raised in its isolated process; the message is its traceback."""


class IsolatedJobDied(Exception):
    """The isolated process died without reporting (a signal, os._exit, out of memory)."""


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def run_isolated(
    handler: Callable[[Any, JobContext], Any],
    payload: Any,
    ctx: JobContext,
    guard: Callable[[], AbstractContextManager[None]],
) -> Any:
    """Fork, run the handler in the child, return its JSON result or raise its failure.

    `guard()` wraps the wait in the parent (the job's timeout and interruption); if it raises,
    the child is killed.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report on the pipe, exit without any cleanup
        os.close(read_fd)
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        try:
            report = orjson.dumps({"value": handler(payload, ctx)})
        except BaseException:  # noqa: BLE001 - report everything; this process exits next
            report = orjson.dumps({"error": traceback.format_exc()})
        os.write(write_fd, report)
        os._exit(0)
    os.close(write_fd)
    output: bytes | None = None
    try:
        with os.fdopen(read_fd, "rb") as pipe, guard():
            output = pipe.read()  # EOF when the child exits, however it exits
    finally:
        if output is None:  # timed out or interrupted: stop the child
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not output:
        raise IsolatedJobDied(f"job process died ({_describe(status)})")
    report = orjson.loads(output)
    if "error" in report:
        raise IsolatedJobFailed(report["error"])
    return report["value"]
