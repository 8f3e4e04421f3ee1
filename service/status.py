"""`python -m service status [--json] [--failures N]`: queues, workers and failures, from Redis.

For an operator at a shell (`docker compose exec worker python -m service status`): per named
queue, its waiting jobs by priority, scheduled jobs (and how many are due), running and dead
jobs, how long the oldest waiting job has waited, and whether it is paused; the live worker
processes, from their registrations; the schedules (when each fires next and last fired, in
its time zone, how many jobs it published and how many fire times its misfire policy
dropped); the most recent failures in the dead-letter queue, and how many dead jobs
DEAD_MAX_JOBS has trimmed. The figures are the backlog gauges'
(service/telemetry/gauges.py reads them), the failures GET /dead's first page; the service's
own settings (QUEUE_REDIS_*) say where Redis is. Nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import NoReturn
from zoneinfo import ZoneInfo

import orjson
import redis
import redis.asyncio as aioredis

from service.config import constants, queues
from service.config.settings import Settings
from service.jobs import records
from service.store import connection
from service.store.dead_letters import DeadLetters, Filter
from service.store.schedules import Book, Stored
from service.telemetry import gauges

DEFAULT_FAILURES = 10
ERROR_WIDTH = 100  # characters of an error the text output shows (--json has it whole)


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str  # a named queue: its RQ queues `<queue>.high`, `<queue>`, `<queue>.low` together
    waiting: dict[str, int]  # by priority: high, default, low (as the metrics label them)
    scheduled: int  # delayed jobs, run_at jobs and retries waiting out their backoff
    due: int  # of those, already due (workers promote them within one processing interval)
    running: int  # claimed by a worker process (in a started registry)
    dead: int  # in a failed registry: the dead-letter queue
    oldest_waiting_seconds: float | None  # since the job at the head was queued; None if none
    workers: int  # live worker processes registered for it (for its default priority)
    paused: bool  # POST /queues/{name}/pause: workers start none of its jobs


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    name: str
    host: str | None
    pid: int | None
    state: str | None  # busy or idle
    slots: str | None  # jobs running of those it may run at once: "3/5"
    queues: list[str]
    last_heartbeat: str | None
    heartbeat_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    id: str  # `<job type>/<name>`
    cron: str | None  # one of cron and every
    every: int | None  # seconds
    timezone: str | None  # None: its definition is unreadable (stored by another version)
    next_fire: str | None  # ISO 8601 in its time zone; None while paused
    last_fire: str | None  # the latest fire time it published a job for
    paused: bool
    fired: int  # jobs its fires published
    missed: int  # fire times its misfire policy dropped


@dataclass(frozen=True, slots=True)
class Failure:
    id: str
    type: str | None
    queue: str
    ended_at: str | None
    error: str | None  # the last line of the traceback, as GET /dead shows it


@dataclass(frozen=True, slots=True)
class Status:
    redis: str  # the queue's Redis, password masked
    at: str
    queues: list[QueueStatus]
    workers: list[WorkerStatus]
    schedules: list[ScheduleStatus]  # the soonest due first, the paused ones last
    failures: list[Failure]  # newest first
    history_pending: int  # job state changes waiting in Redis for MongoDB
    history_dropped: int
    dead_trimmed: int  # dead jobs removed to keep each queue within DEAD_MAX_JOBS, ever
    dead_max_jobs: int  # DEAD_MAX_JOBS, as this process reads it


async def collect(client: aioredis.Redis, settings: Settings, failures: int) -> Status:
    """The backlog as the metrics read it (service.telemetry.gauges), then the worker registrations,
    the dropped-events count and the dead-letter queue's first page; the trimmed dead jobs'
    count comes with the backlog."""
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.smembers(constants.QUEUES_KEY)
        pipe.smembers(constants.PAUSED_KEY)
        known, paused = await pipe.execute()
    bases = {settings.queue_name, *settings.worker_queues}
    bases |= {queues.base(constants.queue_of_key(key)) for key in known}
    bases |= {queues.base(records.as_text(member)) for member in paused}
    plan = gauges.BacklogPlan(bases)
    backlog = await gauges.read_backlog_async(client, plan)
    async with client.pipeline(transaction=False) as pipe:
        pipe.smembers(constants.WORKERS_KEY)
        pipe.get(constants.HISTORY_DROPPED_KEY)
        worker_keys, dropped = await pipe.execute()
    keys = sorted(records.as_text(key) for key in worker_keys)
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        registrations = await pipe.execute()
    workers = [
        worker
        for key, fields in zip(keys, registrations, strict=True)
        if (worker := _worker(key, fields, now)) is not None
    ]
    return Status(
        redis=str(settings.queue_redis),
        at=records.utc_iso(now),
        queues=[_queue(base, figures) for base, figures in backlog.queues.items()],
        workers=workers,
        schedules=[_schedule(one) for one in await Book(client).list()],
        failures=await _failures(client, queues.served(bases), failures),
        history_pending=backlog.history_pending,
        history_dropped=int(dropped or 0),
        dead_trimmed=backlog.dead_trimmed,
        dead_max_jobs=settings.dead_max_jobs,
    )


def _queue(base: str, figures: gauges.QueueFigures) -> QueueStatus:
    waiting: dict[str, int] = {p: figures.waiting.get(p, 0) for p in queues.PRIORITIES}
    return QueueStatus(
        queue=base,
        waiting=waiting,
        scheduled=figures.scheduled,
        due=figures.due,
        running=figures.running,
        dead=figures.dead,
        oldest_waiting_seconds=figures.oldest_age if any(waiting.values()) else None,
        workers=figures.workers,
        paused=figures.paused,
    )


def _schedule(stored: Stored) -> ScheduleStatus:
    found = stored.definition
    if found is None:
        return ScheduleStatus(
            stored.id, None, None, None, None, None, stored.paused, stored.fired, stored.missed
        )
    zone = ZoneInfo(found.schedule.timezone)

    def instant(moment: int | None) -> str | None:
        return None if moment is None else datetime.fromtimestamp(moment, zone).isoformat()

    return ScheduleStatus(
        stored.id,
        found.schedule.cron,
        found.schedule.every,
        found.schedule.timezone,
        None if stored.paused else instant(stored.next),
        instant(stored.last),
        stored.paused,
        stored.fired,
        stored.missed,
    )


def _worker(key: str, fields: dict[bytes, bytes], now: float) -> WorkerStatus | None:
    """A worker registration, or None when it expired after the set was read (it died)."""
    if not fields:
        return None
    text = {records.as_text(k): records.as_text(v) for k, v in fields.items()}
    heartbeat = text.get("last_heartbeat")
    beat = records.epoch(heartbeat)
    pid = text.get("pid", "")
    return WorkerStatus(
        name=key.removeprefix(constants.worker_key("")),
        host=text.get("hostname"),
        pid=int(pid) if pid.isdigit() else None,
        state=text.get("state"),
        slots=text.get("slots"),
        queues=[q for q in text.get("queues", "").split(",") if q],
        last_heartbeat=heartbeat,
        heartbeat_age_seconds=None if beat is None else max(0.0, now - beat),
    )


async def _failures(client: aioredis.Redis, served: list[str], limit: int) -> list[Failure]:
    """The dead-letter queue's first page (GET /dead's order: by failure time plus
    failure_ttl, so newest first among jobs that share a failure_ttl)."""
    if limit == 0:
        return []
    dead = DeadLetters(client)
    found, _ = await dead.page(await dead.queues(served), Filter(), limit, None)
    found.sort(key=lambda job: job.failed_epoch or 0.0, reverse=True)
    failures = []
    for job in found:
        view = job.view()
        failures.append(Failure(job.id, job.type, job.queue, job.failed_at, view["error"]))
    return failures


# --- output ----------------------------------------------------------------------------------
def render(status: Status) -> str:
    """Aligned text for a terminal."""
    lines = [f"Redis {status.redis} at {status.at}", ""]
    header = ["QUEUE", "HIGH", "DEFAULT", "LOW", "SCHEDULED", "DUE", "RUNNING", "DEAD"]
    header += ["OLDEST WAITING", "WORKERS", "PAUSED"]
    rows = [
        [
            q.queue,
            *(str(n) for n in q.waiting.values()),
            *(str(n) for n in (q.scheduled, q.due, q.running, q.dead)),
            _age(q.oldest_waiting_seconds),
            str(q.workers),
            "paused" if q.paused else "-",
        ]
        for q in status.queues
    ]
    lines += _table(header, rows, right=set(range(1, 11)))
    lines.append("")
    if status.workers:
        lines.append(f"WORKERS ({len(status.workers)} alive)")
        header = ["NAME", "HOST", "PID", "STATE", "SLOTS", "QUEUES", "HEARTBEAT"]
        rows = [
            [
                w.name,
                w.host or "-",
                str(w.pid or "-"),
                w.state or "-",
                w.slots or "-",
                ",".join(w.queues),
                f"{_age(w.heartbeat_age_seconds)} ago",
            ]
            for w in status.workers
        ]
        lines += _table(header, rows, right={2})
    else:
        lines.append("WORKERS: none alive")
    lines.append("")
    lines += _schedules(status.schedules)
    if status.failures:
        lines.append(f"RECENT FAILURES ({len(status.failures)}, newest first)")
        header = ["ID", "TYPE", "QUEUE", "ENDED AT", "ERROR"]
        rows = [
            [f.id, f.type or "-", f.queue, f.ended_at or "-", _clip(f.error or "-")]
            for f in status.failures
        ]
        lines += _table(header, rows, right=set())
    else:
        lines.append("RECENT FAILURES: none in the dead-letter queue")
    lines.append(
        f"DEAD LETTERS: {status.dead_trimmed} trimmed, oldest first, to keep each queue within"
        f" DEAD_MAX_JOBS ({status.dead_max_jobs})"
    )
    lines.append("")
    lines.append(
        f"HISTORY: {status.history_pending} events waiting for MongoDB,"
        f" {status.history_dropped} dropped"
    )
    return "\n".join(lines) + "\n"


def _schedules(schedules: list[ScheduleStatus]) -> list[str]:
    if not schedules:
        return ["SCHEDULES: none", ""]
    header = ["ID", "CRON/EVERY", "TIMEZONE", "NEXT FIRE", "LAST FIRE", "PAUSED", "FIRED"]
    header.append("MISSED")
    rows = [
        [
            s.id,
            s.cron or (f"every {s.every}s" if s.every else "(unreadable)"),
            s.timezone or "-",
            s.next_fire or "-",
            s.last_fire or "-",
            "paused" if s.paused else "-",
            str(s.fired),
            str(s.missed),
        ]
        for s in schedules
    ]
    return [f"SCHEDULES ({len(schedules)})", *_table(header, rows, right={6, 7}), ""]


def to_json(status: Status) -> str:
    return orjson.dumps(asdict(status), option=orjson.OPT_INDENT_2).decode() + "\n"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; the `right` ones (numbers) aligned right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _age(seconds: float | None) -> str:
    """3.2s, 45s, 12m05s, 3h07m, 2d04h; '-' for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


# --- command line ----------------------------------------------------------------------------
class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _count(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= constants.LIST_MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected 0-{constants.LIST_MAX_LIMIT}, got {text!r}")
    return value


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m service status",
        description="Queues, live workers and recent failures, read from the queue's Redis.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document, for machines")
    parser.add_argument(
        "--failures",
        type=_count,
        default=DEFAULT_FAILURES,
        metavar="N",
        help=f"most recent failures to list (default {DEFAULT_FAILURES}, 0 for none)",
    )
    return parser.parse_args(list(argv))


async def _read(settings: Settings, failures: int) -> Status:
    client = connection.connect_async(settings.queue_redis)
    try:
        return await collect(client, settings, failures)
    finally:
        await client.aclose()


def main(settings: Settings, argv: Sequence[str]) -> int:
    """Print the status; exit 0, 64 on a bad command line, 69 when Redis is unreachable."""
    try:
        options = parse(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return constants.EXIT_USAGE
    try:
        status = asyncio.run(_read(settings, options.failures))
    except (redis.RedisError, OSError) as exc:
        print(f"status: Redis at {settings.queue_redis} is unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_UNAVAILABLE
    sys.stdout.write(to_json(status) if options.json else render(status))
    return constants.EXIT_OK
