"""Schedules and pause: an every-second schedule over three worker containers while they are
SIGKILLed and Redis restarts, and how fast a pause takes hold under a steady stream of jobs.

Fires: three worker containers (one process each) tick over `bench.tick`'s every-second
schedule (benchmarks/schedule_handlers.py) for --schedule-seconds (60; quick 20), against a
redis-server of this phase with AOF on (appendonly yes, everysec). Every 10 s one container is
SIGKILLed (its whole process group, as the kernel's OOM killer or a node loss would) and a new
one started in its place; midway, Redis is restarted on the same port and directory (it
reloads its AOF). The fire times in the window are then counted from the jobs in Redis (a
fire's job id is `sched-<schedule digest>-<fire time>`) and from the handler's own notes of
its runs: fires expected, seen, missed, fire times published or run twice, and the lateness
of each fire (its job's `enqueued_at` minus its fire time).

Pause: three containers (one process x 5 each) drain a steady stream of 5 ms `bench.stamp`
jobs published at PAUSE_RATE jobs/s; the queue is paused through the API for PAUSE_SECONDS,
then resumed. Each job notes its start time, so the figure is the latest start after the
pause call returned (a start before it counts as none), and the start rate before the pause
and after the resume (which also drains what waited).
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import redis

from benchmarks.common import DB_APP, DB_SERVICE, QUEUE, Child, load_average, log, parse_rq_time
from benchmarks.demo_handlers import STAMPS
from benchmarks.harness import HANDLERS, Bench, Row
from benchmarks.schedule_handlers import TICKS
from service.config import constants
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs.schedule import fire_job_id
from service.store.publish import publish_now

T = TypeVar("T")
CONTAINERS = 3
SECONDS, SECONDS_QUICK = 60, 20  # the fire window
KILL_EVERY = 10  # seconds between two SIGKILLs of a container
TICK_HANDLERS = f"{HANDLERS},benchmarks.schedule_handlers"
PAUSE_RATE = 200  # jobs/s published during the pause figure
PAUSE_SECONDS = 3.0  # how long the queue stays paused
RATE_SECONDS = 3.0  # the window of the rate before the pause and after the resume


@dataclass
class FireFigures:
    expected: int
    seen: int
    missed: int
    published_twice: int  # fire times whose schedule counted more jobs than exist
    run_twice: int  # fire times whose job ran more than once
    lateness: list[float]  # seconds, one per fire seen
    events: list[str]


def run(bench: Bench) -> None:
    seconds = SECONDS_QUICK if bench.args.quick else SECONDS
    log(
        f"\n== schedules: an every-second schedule over {CONTAINERS} worker containers for "
        f"{seconds} s, one SIGKILLed and replaced every {KILL_EVERY} s, Redis (AOF) restarted "
        f"midway; then a pause under {PAUSE_RATE} jobs/s (load average {load_average()})"
    )
    fires = _fires(bench, seconds)
    pause = _pause(bench)
    _report(bench, fires, pause)


# --- fires ----------------------------------------------------------------------------------


def _start(bench: Bench, **extra: str) -> Child:
    return bench.start_worker(1, 5, HANDLER_MODULES=TICK_HANDLERS, **extra)


def _fires(bench: Bench, seconds: int) -> FireFigures:
    server = EmbeddedRedis(appendonly=True, extra_args=("--appendfsync", "everysec")).start()
    events: list[str] = []
    try:
        with bench.using_redis(server):
            queue = bench.db(DB_SERVICE)
            workers = [_start(bench) for _ in range(CONTAINERS)]
            schedule_id = _wait_schedule(queue)
            first = int(time.time()) + 2  # the window: fire times first .. first + seconds - 1
            kills = [first + k for k in range(KILL_EVERY, seconds, KILL_EVERY)]
            restart_at = first + seconds // 2 + KILL_EVERY // 2
            end = first + seconds
            while time.time() < end:
                now = time.time()
                if kills and now >= kills[0]:
                    kills.pop(0)
                    victim = workers.pop(0)
                    bench.procs.kill(victim)
                    workers.append(_start(bench))
                    events.append(f"t+{now - first:.1f}s SIGKILL pid {victim.pid}, replaced")
                elif restart_at and now >= restart_at:
                    restart_at = 0
                    began = time.monotonic()
                    server.restart()
                    events.append(
                        f"t+{now - first:.1f}s Redis restarted from its AOF "
                        f"({time.monotonic() - began:.2f} s down)"
                    )
                time.sleep(0.05)
            last = fire_job_id(schedule_id, end - 1)
            _wait(lambda: queue.exists(constants.job_key(last)), 30.0, "the window's last fire")
            time.sleep(2.0)  # a fire published twice, or run twice, would show by now
            figures = _count(bench, schedule_id, first, end, events)
            for worker in workers:
                bench.procs.stop(worker)
    finally:
        server.stop()
    for line in events:
        log(f"   {line}")
    return figures


def _wait_schedule(queue: redis.Redis) -> str:
    def found() -> str | None:
        members = cast("list[bytes]", queue.zrange(constants.SCHEDULES_KEY, 0, -1))
        return next((m.decode() for m in members if m.startswith(b"bench.tick/")), None)

    return _wait(found, 30.0, "bench.tick's schedule declared")


def _wait(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return value


def _count(bench: Bench, schedule_id: str, first: int, end: int, events: list[str]) -> FireFigures:
    queue, app = bench.db(DB_SERVICE), bench.db(DB_APP)
    prefix = constants.job_key(fire_job_id(schedule_id, 0).removesuffix("0"))
    keys = cast("list[bytes]", list(queue.scan_iter(prefix + "*")))
    every = sorted(int(key.decode().removeprefix(prefix)) for key in keys)
    window = [moment for moment in every if first <= moment < end]
    with queue.pipeline(transaction=False) as pipe:
        for moment in window:
            pipe.hget(constants.job_key(fire_job_id(schedule_id, moment)), "enqueued_at")
        enqueued = pipe.execute()
    lateness = [
        (parse_rq_time(at) or 0.0) - moment for moment, at in zip(window, enqueued, strict=True)
    ]
    fired = int(queue.hget(constants.schedule_key(schedule_id), "fired") or 0)
    ticks = cast("dict[bytes, bytes]", app.hgetall(TICKS))
    runs = {key.decode(): int(value) for key, value in ticks.items()}
    run_twice = sum(1 for moment in window if runs.get(fire_job_id(schedule_id, moment), 0) > 1)
    return FireFigures(
        expected=end - first,
        seen=len(window),
        missed=(end - first) - len(window),
        published_twice=max(0, fired - len(every)),
        run_twice=run_twice,
        lateness=lateness,
        events=events,
    )


# --- pause ----------------------------------------------------------------------------------


@dataclass
class PauseFigures:
    rate_before: float  # jobs started per second
    rate_after: float
    latest_start: float | None  # seconds after the pause call returned; None: no start after
    waited: int  # jobs waiting when the queue was resumed


class _Publisher(threading.Thread):
    """Publishes `bench.stamp` jobs at PAUSE_RATE jobs/s, in tenths of a second."""

    def __init__(self, bench: Bench) -> None:
        super().__init__(daemon=True)
        self.bench = bench
        self.client = redis.Redis(port=bench.server.port, db=DB_SERVICE)
        self.halt = threading.Event()

    def run(self) -> None:
        step = 0.1
        per_step = int(PAUSE_RATE * step)
        tick = time.monotonic()
        while not self.halt.is_set():
            publish_now(self.client, [self.bench.new_job("bench.stamp") for _ in range(per_step)])
            tick += step
            self.halt.wait(max(0.0, tick - time.monotonic()))
        self.client.close()


def _post(url: str) -> None:
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"POST {url}: {response.status}")


def _started_between(app: redis.Redis, since: float, until: float) -> int:
    return int(app.zcount(STAMPS, since, until))


def _pause(bench: Bench) -> PauseFigures:
    app = bench.db(DB_APP)
    app.delete(STAMPS)
    api, base = bench.start_api()
    workers = [bench.start_worker(1, 5) for _ in range(CONTAINERS)]
    publisher = _Publisher(bench)
    publisher.start()
    try:
        time.sleep(RATE_SECONDS + 1.0)  # a steady state, then its rate
        now = time.time()
        rate_before = _started_between(app, now - RATE_SECONDS, now) / RATE_SECONDS
        _post(f"{base}/queues/{QUEUE}/pause")
        returned = time.time()
        time.sleep(PAUSE_SECONDS)
        waited = int(bench.db(DB_SERVICE).llen(constants.queue_key(QUEUE)))
        latest = cast(
            "list[tuple[bytes, float]]",
            app.zrevrangebyscore(STAMPS, "+inf", returned, start=0, num=1, withscores=True),
        )
        _post(f"{base}/queues/{QUEUE}/resume")
        resumed = time.time()
        time.sleep(RATE_SECONDS)
        rate_after = _started_between(app, resumed, resumed + RATE_SECONDS) / RATE_SECONDS
    finally:
        publisher.halt.set()
        publisher.join(5)
        for child in [*workers, api]:
            bench.procs.stop(child)
    return PauseFigures(
        rate_before, rate_after, latest[0][1] - returned if latest else None, waited
    )


# --- the report -----------------------------------------------------------------------------


def _report(bench: Bench, fires: FireFigures, pause: PauseFigures) -> None:
    late = sorted(fires.lateness) or [0.0]
    on_target = abs(fires.seen - fires.expected) <= 1 and not (
        fires.published_twice or fires.run_twice
    )
    latest = "none" if pause.latest_start is None else f"{pause.latest_start * 1e3:,.0f} ms"
    lines = [
        "## Schedules and pause",
        "",
        f"An every-second schedule over {CONTAINERS} worker containers for {fires.expected} s, "
        f"one SIGKILLed and replaced every {KILL_EVERY} s, Redis (appendonly yes, everysec) "
        "restarted midway:",
        "",
        "| fires expected | seen | missed | published twice | run twice | lateness p50 | max |",
        "|---|---|---|---|---|---|---|",
        f"| {fires.expected} | {fires.seen} | {fires.missed} | {fires.published_twice} | "
        f"{fires.run_twice} | {statistics.median(late) * 1e3:,.0f} ms | "
        f"{late[-1] * 1e3:,.0f} ms |",
        "",
        f"Pause under {PAUSE_RATE} jobs/s of 5 ms jobs, {CONTAINERS} containers x 5 slots: "
        f"latest start after the pause returned: {latest}; started {pause.rate_before:,.0f} "
        f"jobs/s before the pause, {pause.rate_after:,.0f} jobs/s in the {RATE_SECONDS:g} s "
        f"after the resume ({pause.waited:,} jobs had waited {PAUSE_SECONDS:g} s).",
        "",
    ]
    bench.sections += lines
    log("\n".join("   " + line for line in lines))
    bench.rows.append(
        Row(
            f"Schedules: every-second fires seen of {fires.expected} (3 containers, kills, "
            "Redis restart); max lateness",
            f"{fires.seen}; {late[-1] * 1e3:,.0f} ms",
            f"{fires.expected} expected",
            f"{fires.expected} ± 1, none twice: {'met' if on_target else '**missed**'}",
        )
    )
    bench.rows.append(
        Row(
            "Pause: latest job start after the pause returned ↓",
            latest,
            "1 s",
            "met" if pause.latest_start is None or pause.latest_start < 1.0 else "**missed**",
        )
    )
