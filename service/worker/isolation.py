"""Running one job alone, in a forked child: job types registered with `isolated=True`, and
any job that has killed a runner before (so a crash can only take itself down).

The child builds its own clients (none crosses a fork), runs the handler (an `async def` one
on an event loop of its own) and writes its outcome to a pipe. The parent's lane waits on the
pipe in short steps, so a stop raised into its thread (timeout, cancel, shutdown) lands within
one step; the child is then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from typing import Any

import orjson

from service.config import constants
from service.config.settings import Settings
from service.jobs.states import Ending
from service.worker.execute import Attempt, Outcome, call_async, call_sync

WAIT_STEP = 0.05  # seconds between looks at a stop request while the child runs
LOST_ALONE = (
    "WorkerLost: the job's process died while it ran alone, after killing a worker before ({how})"
)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def run_alone(attempt: Attempt, settings: Settings) -> Outcome:
    """Fork, run the attempt in the child, and return its outcome. A child that dies without
    reporting is a crash for a job that killed a runner before (counted toward MAX_CRASHES),
    and a failed attempt for an isolated job type."""
    attempt.start()  # counted and timed here: the child's metrics would be lost
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report on the pipe, exit without any cleanup
        os.close(read_fd)
        _child(attempt, settings, write_fd)
    os.close(write_fd)
    # The longest report: the result's JSON in base64 (the child checked it against
    # MAX_RESULT_BYTES) or the error text (cut to JOB_ERROR_MAX_CHARS, 6 bytes of JSON each).
    bound = 4 * settings.max_result_bytes // 3 + 6 * constants.JOB_ERROR_MAX_CHARS + 1024
    output: bytes | None = None
    try:
        output = _read_all(read_fd, bound)
    finally:
        os.close(read_fd)
        if output is None or len(output) > bound:  # stopped, or a report too long: stop it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if output is not None and len(output) > bound:
        return attempt.failed_with(f"IsolatedJobDied: job process wrote over {bound} bytes")
    if not output or status != 0:  # no report, or one cut short by the child's death
        how = _describe(status)
        if attempt.claimed.crashes > 0:
            return attempt.crashed(LOST_ALONE.format(how=how))
        return attempt.failed_with(f"IsolatedJobDied: job process died ({how})")
    report: dict[str, Any] = orjson.loads(output)
    return attempt.reported(
        Ending(report["kind"]),
        report["value"].encode(),
        report["reason"],
        report["error"],
        report["delay"],
    )


def _child(attempt: Attempt, settings: Settings, write_fd: int) -> None:
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    try:
        from service.worker.clients import Clients

        clients = Clients(settings)
        if attempt.is_async:
            outcome = asyncio.run(call_async(attempt, clients))
        else:
            outcome = call_sync(attempt, clients)
        report = orjson.dumps(
            {
                "kind": outcome.kind,
                "value": outcome.value.decode(),  # base64 already
                "reason": outcome.reason,
                "error": outcome.error[-constants.JOB_ERROR_MAX_CHARS :],
                "delay": outcome.delay,
            }
        )
    except BaseException:  # noqa: BLE001 - report nothing: the parent sees the child died
        os._exit(70)
    view = memoryview(report)
    while view:
        view = view[os.write(write_fd, view) :]
    os._exit(0)


def _read_all(fd: int, bound: int) -> bytes:
    """What the child writes until it exits (EOF), or just over `bound` bytes, looking up
    every WAIT_STEP (a stop raised into this thread lands there)."""
    chunks: list[bytes] = []
    size = 0
    while size <= bound:
        ready, _, _ = select.select([fd], [], [], WAIT_STEP)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)
