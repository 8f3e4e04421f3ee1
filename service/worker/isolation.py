"""Running one job alone, in a forked child: job types registered with `isolated=True`, and
any job that has killed a runner before (so a crash can only take itself down).

The child builds its own clients (none crosses a fork), runs the handler (an `async def` one
on an event loop of its own) and writes its outcome to a pipe. The parent's lane waits on the
pipe in short steps, so a stop raised into its thread (timeout, cancel, shutdown) lands within
one step; the child is then killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import select
import signal
from typing import Any

import orjson

from service.settings import Settings
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
    output: bytes | None = None
    try:
        output = _read_all(read_fd)
    finally:
        os.close(read_fd)
        if output is None:  # stopped while it ran: stop the child
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not output:
        how = _describe(status)
        if attempt.claimed.crashes > 0:
            return attempt.crashed(LOST_ALONE.format(how=how))
        return attempt.failed_with(f"IsolatedJobDied: job process died ({how})")
    report: dict[str, Any] = orjson.loads(output)
    return attempt.reported(
        report["kind"],
        base64.b64decode(report["value"]),
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
                "value": base64.b64encode(outcome.value).decode(),
                "reason": outcome.reason,
                "error": outcome.error,
                "delay": outcome.delay,
            }
        )
    except BaseException:  # noqa: BLE001 - report nothing: the parent sees the child died
        os._exit(70)
    view = memoryview(report)
    while view:
        view = view[os.write(write_fd, view) :]
    os._exit(0)


def _read_all(fd: int) -> bytes:
    """Everything the child writes, until it exits (EOF), looking up every WAIT_STEP."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], WAIT_STEP)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
