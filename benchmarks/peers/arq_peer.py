"""arq (asyncio) with a 10 ms poll delay (its default is 500 ms) and up to `--threads` jobs at
a time (`max_jobs`; its default is 10); results kept for an hour as by default."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

from benchmarks.peers import driver

POLL_DELAY = 0.01


async def noop(ctx: dict[str, Any], index: int = -1, sent: float = 0.0) -> None:
    driver.record(index, sent)


async def sleep(ctx: dict[str, Any]) -> None:
    started = time.time()
    await asyncio.sleep(driver.SLEEP_SECONDS)
    driver.record_span(started)


class Adapter:
    queue_key = "arq:queue"
    description = f"poll {POLL_DELAY * 1e3:.0f} ms"

    def setup(self, url: str, args: argparse.Namespace) -> None:
        self.settings = RedisSettings.from_dsn(url)
        self.task = args.task
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(self.settings))

    def enqueue(self, index: int, sent: float) -> None:
        call = (
            self.pool.enqueue_job(self.task)
            if index < 0
            else self.pool.enqueue_job("noop", index, sent)
        )
        self.loop.run_until_complete(call)

    def work(self, threads: int, ready: Callable[[], None]) -> None:
        async def started(ctx: dict[str, Any]) -> None:
            ready()

        asyncio.set_event_loop(asyncio.new_event_loop())
        worker = Worker(
            functions=[func(noop, name="noop"), func(sleep, name="sleep")],
            redis_settings=self.settings,
            poll_delay=POLL_DELAY,
            max_jobs=threads,
            on_startup=started,
            handle_signals=True,
        )
        worker.run()  # returns after SIGTERM
