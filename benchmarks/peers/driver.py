"""Measures one Python peer job queue; runs inside that peer's own venv (benchmarks/.peers/).

    python -m benchmarks.peers.driver PEER --redis URL [--processes P] [--threads T] ...

PEER is a module beside this one (`celery_peer`, `dramatiq_peer`, `arq_peer`) with an `Adapter`.
Prints its result as one line, `RESULT {json}`, on stdout. Only the standard library and
redis-py (which every peer depends on) are imported here.

How it times the peer like the service: worker processes are forked with shared memory; the
no-op task records, in its process's slot, when the first job started and the last one ended,
and for latency jobs when each job started. No Redis call is added per job. With
`--task sleep` the drained jobs wait SLEEP_SECONDS each instead (how is the peer's: arq
awaits `asyncio.sleep`, Dramatiq's threads block in `time.sleep`) and record their span.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from ctypes import c_double
from multiprocessing.context import ForkProcess
from multiprocessing.sharedctypes import RawArray
from typing import Any, Protocol

import redis

PARKED_KEY = "bench:peer-parked"
RESULT_MARK = "RESULT "  # starts the line that holds the JSON result (peers print too)
FIRST, LAST, COUNT = 0, 1, 2  # fields of a process's slot
SLOT_SIZE = 3
SLEEP_SECONDS = 0.1  # what a `sleep` job waits: the I/O job of the concurrency phase


class Adapter(Protocol):
    """What a peer module provides. `setup` runs before the worker processes are forked."""

    queue_key: str  # the Redis key of waiting jobs, parked while the workers start
    description: str  # e.g. "solo pool", for the report

    def setup(self, url: str, args: argparse.Namespace) -> None:
        """Declare the tasks; `args.task` names the one `enqueue` sends without an index."""
        ...

    def enqueue(self, index: int, sent: float) -> None: ...
    def work(self, threads: int, ready: Callable[[], None]) -> None:
        """Run a worker in this (forked) process until SIGTERM; call `ready` once consuming."""
        ...


# --- what the no-op task calls, in the worker processes -------------------------------------

_slot: Any = None  # this process's [first start, last end, count]
_latency: Any = None  # started_at - sent for each latency job, by index
_lock = threading.Lock()  # a peer may run several threads per process


def record(index: int = -1, sent: float = 0.0) -> None:
    """The body of every peer's no-op task."""
    now = time.time()
    with _lock:
        slot = _slot
        if slot[COUNT] == 0:
            slot[FIRST] = now
        if index >= 0:
            _latency[index] = now - sent
        slot[COUNT] += 1
        slot[LAST] = time.time()


def record_span(started: float) -> None:
    """The end of a job that began at `started` (epoch seconds): for jobs that take time, which
    need not end in the order they started."""
    now = time.time()
    with _lock:
        slot = _slot
        if slot[COUNT] == 0 or started < slot[FIRST]:
            slot[FIRST] = started
        slot[COUNT] += 1
        slot[LAST] = max(slot[LAST], now)


# --- the parent side ------------------------------------------------------------------------


class Run:
    def __init__(self, adapter: Adapter, args: argparse.Namespace) -> None:
        self.adapter = adapter
        self.args = args
        self.client = redis.Redis.from_url(args.redis)
        self.slots: Any = RawArray(c_double, args.processes * SLOT_SIZE)
        self.ready: Any = RawArray(c_double, args.processes)
        self.children: list[ForkProcess] = []

    def count(self) -> int:
        return int(sum(self.slots[k * SLOT_SIZE + COUNT] for k in range(self.args.processes)))

    def reset(self, latency_jobs: int) -> None:
        global _latency
        for k in range(len(self.slots)):
            self.slots[k] = 0.0
        for k in range(len(self.ready)):
            self.ready[k] = 0.0
        _latency = RawArray(c_double, max(1, latency_jobs))

    def start_workers(self) -> None:
        for k in range(self.args.processes):
            child = multiprocessing.get_context("fork").Process(
                target=self._child, args=(k,), daemon=False
            )
            child.start()
            self.children.append(child)
        deadline = time.monotonic() + 60
        while sum(self.ready) < self.args.processes:
            if time.monotonic() > deadline or any(not c.is_alive() for c in self.children):
                raise RuntimeError("peer workers did not all start")
            time.sleep(0.02)

    def _child(self, k: int) -> None:
        global _slot
        _slot = _SlotView(self.slots, k * SLOT_SIZE)  # (a slice of a RawArray is a copy)

        def ready() -> None:
            self.ready[k] = 1.0

        self.adapter.work(self.args.threads, ready)

    def stop_workers(self) -> list[int]:
        """SIGTERM (each peer's graceful stop), then SIGKILL after 15 s. Returns VmRSS KiB."""
        rss = [_vm_rss(c.pid) for c in self.children if c.pid is not None]
        for child in self.children:
            if child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        for child in self.children:
            child.join(15)
            if child.is_alive():
                child.kill()
                child.join()
        self.children = []
        return rss

    def wait_count(self, total: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.count() < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count()} of {total} jobs done after {timeout:g} s")
            if any(not c.is_alive() for c in self.children):
                raise RuntimeError("a peer worker process died")
            time.sleep(0.01)
        return time.monotonic()

    # --- measurements ---
    def drain(self, n: int) -> dict[str, Any]:
        self.reset(0)
        started = time.perf_counter()
        for _ in range(n):
            self.adapter.enqueue(-1, 0.0)
        enqueue_seconds = time.perf_counter() - started
        self.client.rename(self.adapter.queue_key, PARKED_KEY)
        self.start_workers()
        cpu, calls = _redis_sample(self.client)
        released = time.monotonic()
        self.client.rename(PARKED_KEY, self.adapter.queue_key)
        done = self.wait_count(n, timeout=max(120.0, n / 20))
        cpu2, calls2 = _redis_sample(self.client)
        calls2.subtract(calls)
        calls2["info"] = 0
        rss = self.stop_workers()
        firsts = [self.slots[k * SLOT_SIZE + FIRST] for k in range(self.args.processes)]
        lasts = [self.slots[k * SLOT_SIZE + LAST] for k in range(self.args.processes)]
        span = max(lasts) - min(f for f in firsts if f > 0)
        return {
            "jobs": n,
            "span": span,
            "rate": n / span,
            "wall": done - released,
            "enqueue_rate": n / enqueue_seconds,
            "redis_us": (cpu2 - cpu) / n * 1e6,
            "redis_commands": sum(v for v in calls2.values() if v > 0) / n,
            "rss_kib": rss,
        }

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        total = int(rate * (seconds + 1))
        warmup = int(rate)
        self.reset(total)
        self.start_workers()
        lag = 0.0
        start = time.time() + 0.05
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            if i >= warmup:
                lag = max(lag, time.time() - scheduled)
            self.adapter.enqueue(i, scheduled)
        self.wait_count(total, timeout=60.0 + total / 20)
        self.stop_workers()
        ms = sorted(_latency[i] * 1e3 for i in range(warmup, total))
        return {
            "jobs": len(ms),
            "p50": _percentile(ms, 50),
            "p90": _percentile(ms, 90),
            "p99": _percentile(ms, 99),
            "max": ms[-1],
            "lag_ms": lag * 1e3,
        }


class _SlotView:
    """Index k of a process's slot, written straight into the shared array."""

    def __init__(self, array: Any, offset: int) -> None:
        self.array, self.offset = array, offset

    def __getitem__(self, k: int) -> float:
        value: float = self.array[self.offset + k]
        return value

    def __setitem__(self, k: int, value: float) -> None:
        self.array[self.offset + k] = value


def _redis_sample(client: redis.Redis) -> tuple[float, Counter[str]]:
    info = client.info("cpu")
    stats = client.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), calls


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _percentile(ordered: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Measure one peer job queue.")
    parser.add_argument("peer")
    parser.add_argument("--redis", required=True, help="redis://host:port/db, flushed by caller")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--measure", default="drain,latency")
    parser.add_argument("--task", choices=("noop", "sleep"), default="noop", help="drained jobs")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"benchmarks.peers.{args.peer}_peer")
    adapter: Adapter = module.Adapter()
    adapter.setup(args.redis, args)
    run = Run(adapter, args)
    result: dict[str, Any] = {"peer": args.peer, "description": adapter.description}
    try:
        for name in args.measure.split(","):
            run.client.flushdb()
            if name == "drain":
                result["drain"] = run.drain(args.jobs)
            elif name == "latency":
                result["latency"] = run.latency(args.rate, args.duration)
    finally:
        if run.children:
            run.stop_workers()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    # Run the imported module's main: the adapters import `benchmarks.peers.driver`, and the
    # task's shared-memory globals must be that module's, not this `__main__` copy's.
    from benchmarks.peers.driver import main as imported_main

    sys.exit(imported_main(sys.argv[1:]))
