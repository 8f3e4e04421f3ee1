"""Celery with the Redis broker and the solo pool (one job at a time in the worker's process).

Celery's defaults otherwise: no result backend, prefetch multiplier 4, early acks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from benchmarks.peers import driver


class Adapter:
    queue_key = "celery"
    description = "solo pool"

    def setup(self, url: str, args: argparse.Namespace) -> None:
        self.app = Celery("bench", broker=url)
        self.app.conf.worker_hijack_root_logger = False
        self.noop: Any = self.app.task(name="noop")(driver.record)

    def enqueue(self, index: int, sent: float) -> None:
        if index < 0:
            self.noop.delay()
        else:
            self.noop.delay(index, sent)

    def work(self, threads: int, ready: Callable[[], None]) -> None:
        worker_ready.connect(lambda **_: ready(), weak=False)
        worker = self.app.Worker(pool="solo", concurrency=1, loglevel="WARNING", quiet=True)
        worker.start()  # returns after a SIGTERM (warm shutdown)
