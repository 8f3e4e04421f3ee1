"""Stand-in worker processes, so tests/worker/test_supervisor.py can drive the supervisor alone:
it starts these instead of `service.worker.process.main`, and a test decides how each one ends.

`python -c "from tests.worker.stand_ins import main; main()"` runs the worker container's
supervisor with its settings from the environment. Each stand-in writes FAKE_DIR/<its pid>
when it starts and counts one finished job in its block; it exits with the code a test writes
to FAKE_DIR/<its pid>.exit, and on SIGTERM with 0, unless FAKE_ON_SIGTERM=ignore (a process
whose job will not stop: it ignores SIGTERM and SIGUSR1, so only SIGKILL ends it).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from service.__main__ import worker_metrics_dir
from service.config.settings import load
from service.jobs import registry
from service.telemetry import logs
from service.worker import supervisor
from service.worker.slots import Slots


def stand_in(settings: object, slots: Slots, index: int, name: str, queues: object) -> None:
    """The signature of `service.worker.process.main`; runs until told to exit."""
    folder = Path(os.environ["FAKE_DIR"])
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    if os.environ.get("FAKE_ON_SIGTERM") == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, stop)
    block = slots[index]
    block.set_ready(True)
    block.count("finished")
    (folder / str(os.getpid())).write_text(name)
    exit_file = folder / f"{os.getpid()}.exit"
    while not stopping:
        block.tick()
        if exit_file.exists():
            os._exit(int(exit_file.read_text()))
        time.sleep(0.02)


def main() -> None:
    settings = load()
    logs.configure(settings, "worker")
    supervisor.process_main = stand_in  # looked up by name each time a process starts
    with worker_metrics_dir():
        sys.exit(supervisor.run(settings, registry.load(())))
