"""Dramatiq with its Redis broker: P processes x T threads (its CLI's default is one process
per CPU, 8 threads each), with Dramatiq's default middleware."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers import driver


class Adapter:
    queue_key = "dramatiq:default"
    description = ""

    def setup(self, url: str, args: argparse.Namespace) -> None:
        self.description = f"{args.processes} processes x {args.threads} threads"
        self.broker = RedisBroker(url=url)
        dramatiq.set_broker(self.broker)
        self.noop: Any = dramatiq.actor(driver.record, actor_name="noop", broker=self.broker)
        sleep: Any = dramatiq.actor(_sleep, actor_name="sleep", broker=self.broker)
        self.drained = sleep if args.task == "sleep" else self.noop

    def enqueue(self, index: int, sent: float) -> None:
        if index < 0:
            self.drained.send()
        else:
            self.noop.send(index, sent)

    def work(self, threads: int, ready: Callable[[], None]) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        worker = dramatiq.Worker(self.broker, worker_threads=threads)
        worker.start()
        ready()
        stop.wait()
        worker.stop()


def _sleep() -> None:
    """The I/O job: blocks its worker thread for SLEEP_SECONDS."""
    started = time.time()
    time.sleep(driver.SLEEP_SECONDS)
    driver.record_span(started)
