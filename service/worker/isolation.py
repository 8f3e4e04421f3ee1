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

from service import constants, jobs
from service.context import JobContext


class IsolatedJobFailed(Exception):
    """The handler raised in its isolated process; the message is its traceback."""


class IsolatedJobDied(Exception):
    """The isolated process died without reporting (a signal, os._exit, out of memory)."""


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# The child's report on the pipe: one tag byte, then the result's JSON (checked against
# MAX_RESULT_BYTES in the child), or the failure as JSON.
_VALUE, _REJECTED, _FAILED = b"v", b"r", b"e"
# Bytes: the longest failure report (its text is cut to JOB_ERROR_MAX_CHARS characters, each
# at most 6 bytes of JSON).
_FAILURE_MAX = 6 * constants.JOB_ERROR_MAX_CHARS + 1024


def _report(
    handler: Callable[[Any, JobContext], Any], payload: Any, ctx: JobContext, max_result_bytes: int
) -> bytes:
    try:
        return _VALUE + jobs.result_json(handler(payload, ctx), max_result_bytes)
    except jobs.ResultRejected as exc:
        return _REJECTED + orjson.dumps({"reason": exc.reason, "error": str(exc)})
    except BaseException:  # noqa: BLE001 - report everything; this process exits next
        error = traceback.format_exc()[-constants.JOB_ERROR_MAX_CHARS :]
        return _FAILED + orjson.dumps({"error": error})


def run_isolated(
    handler: Callable[[Any, JobContext], Any],
    payload: Any,
    ctx: JobContext,
    guard: Callable[[], AbstractContextManager[None]],
    max_result_bytes: int,
) -> bytes:
    """Fork, run the handler in the child, return its result's JSON or raise its failure
    (ResultRejected for a result that is not JSON or passes `max_result_bytes`).

    The child checks its result before writing it, and the parent reads no more than the
    largest report, so a handler cannot make the worker read an unbounded result. `guard()`
    wraps the wait in the parent (the job's timeout and interruption); if it raises, the child
    is killed.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report on the pipe, exit without any cleanup
        os.close(read_fd)
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        report = _report(handler, payload, ctx, max_result_bytes)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(report)
        os._exit(0)
    os.close(write_fd)
    bound = 1 + max(max_result_bytes, _FAILURE_MAX)
    output: bytes | None = None
    try:
        with os.fdopen(read_fd, "rb") as pipe, guard():
            output = pipe.read(bound + 1)  # EOF when the child exits, however it exits
    finally:
        if output is None or len(output) > bound:  # timed out, interrupted, or too long
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if output is not None and len(output) > bound:
        raise IsolatedJobDied(f"job process wrote a report over {bound} bytes")
    if not output or status != 0:  # no report, or one cut short by the child's death
        raise IsolatedJobDied(f"job process died ({_describe(status)})")
    tag, body = output[:1], output[1:]
    if tag == _VALUE:
        return body
    report = orjson.loads(body)
    if tag == _REJECTED:
        raise jobs.ResultRejected(report["reason"], report["error"])
    raise IsolatedJobFailed(report["error"])
