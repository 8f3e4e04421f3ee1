"""`python -m service status [--json] [--failures N]`: queues, workers and failures, from Redis.

For an operator at a shell (`docker compose exec worker python -m service status`): per named
queue, its waiting jobs by priority, scheduled jobs (and how many are due), running and dead
jobs, and how long the oldest waiting job has waited; the live worker processes, from their
registrations; the most recent failures in the dead-letter queue. It reads the keys GET /queues
and GET /dead read, with the service's own settings (QUEUE_REDIS_*), and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import orjson
import redis
import redis.asyncio as aioredis

from service import constants, jobs, queues, store
from service.dead import DeadLetters, Filter
from service.settings import Settings

# Priorities as the metrics label them (service_queue_waiting_jobs{priority}).
PRIORITY_LABELS: dict[queues.Priority, str] = {"high": "high", "default": "normal", "low": "low"}
DEFAULT_FAILURES = 10
ERROR_WIDTH = 100  # characters of an error the text output shows (--json has it whole)


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str  # a named queue: its RQ queues `<queue>.high`, `<queue>`, `<queue>.low` together
    waiting: dict[str, int]  # by priority: high, normal, low
    scheduled: int  # delayed jobs, run_at jobs and retries waiting out their backoff
    due: int  # of those, already due (workers promote them within one processing interval)
    running: int  # claimed by a worker process (in a started registry)
    dead: int  # in a failed registry: the dead-letter queue
    oldest_waiting_seconds: float | None  # since the job at the head was queued; None if none
    workers: int  # live worker processes registered for it


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    name: str
    host: str | None
    pid: int | None
    state: str | None  # busy or idle
    queues: list[str]
    last_heartbeat: str | None
    heartbeat_age_seconds: float | None


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
    failures: list[Failure]  # newest first
    history_pending: int  # job state changes waiting in Redis for MongoDB
    history_dropped: int


async def collect(client: aioredis.Redis, settings: Settings, failures: int) -> Status:
    """Read everything in five round trips, plus the dead-letter queue's pages."""
    now = time.time()
    served = queues.served({settings.queue_name, *settings.worker_queues})
    counts = await store.Store(client).queues(served)  # and every other queue Redis knows
    names = [row["name"] for row in counts]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcount(constants.registry_key("scheduled", name), "-inf", now)
            pipe.lindex(constants.queue_key(name), 0)
        pipe.smembers(constants.WORKERS_KEY)
        pipe.xlen(constants.HISTORY_STREAM)
        pipe.get(constants.HISTORY_DROPPED_KEY)
        *per_queue, worker_keys, pending, dropped = await pipe.execute()
    due, heads = per_queue[0::2], [jobs.as_text(h) if h else None for h in per_queue[1::2]]
    keys = sorted(jobs.as_text(key) for key in worker_keys)
    async with client.pipeline(transaction=False) as pipe:
        for head in heads:
            if head is not None:
                pipe.hget(constants.job_key(head), "enqueued_at")
        for key in keys:
            pipe.hgetall(key)
        replies = iter(await pipe.execute())
    ages = [None if head is None else _waited(head, next(replies), now) for head in heads]
    workers = [w for key in keys if (w := _worker(key, next(replies), now)) is not None]
    return Status(
        redis=str(settings.queue_redis),
        at=jobs.utc_iso(now),
        queues=_by_named_queue(counts, due, ages),
        workers=workers,
        failures=await _failures(client, served, failures),
        history_pending=int(pending),
        history_dropped=int(dropped or 0),
    )


def _by_named_queue(
    counts: list[dict[str, Any]], due: list[int], ages: list[float | None]
) -> list[QueueStatus]:
    """Fold each named queue's three RQ queues (one per priority) into one row."""
    rows: dict[str, dict[str, Any]] = {}
    for count, due_now, age in zip(counts, due, ages, strict=True):
        base, priority = queues.base(count["name"]), queues.priority(count["name"])
        row = rows.setdefault(
            base,
            {
                "waiting": dict.fromkeys(PRIORITY_LABELS.values(), 0),
                **dict.fromkeys(("scheduled", "due", "running", "dead", "workers"), 0),
                "oldest": None,
            },
        )
        row["waiting"][PRIORITY_LABELS[priority]] += count["waiting"]
        row["scheduled"] += count["scheduled"]
        row["due"] += due_now
        row["running"] += count["started"]
        row["dead"] += count["failed"]
        row["workers"] = max(row["workers"], count["workers"])  # one serves all three
        if age is not None:
            row["oldest"] = max(age, row["oldest"] or 0.0)
    return [
        QueueStatus(
            queue=base,
            waiting=row["waiting"],
            scheduled=row["scheduled"],
            due=row["due"],
            running=row["running"],
            dead=row["dead"],
            oldest_waiting_seconds=row["oldest"],
            workers=row["workers"],
        )
        for base, row in rows.items()
    ]


def _waited(job_id: str, enqueued_at: bytes | None, now: float) -> float | None:
    """Seconds since the job was queued (its id's creation time if it has no enqueued_at)."""
    since = jobs.epoch(jobs.as_text(enqueued_at)) if enqueued_at else jobs.id_created_at(job_id)
    return None if since is None else max(0.0, now - since)


def _worker(key: str, fields: dict[bytes, bytes], now: float) -> WorkerStatus | None:
    """A worker registration, or None when it expired after the set was read (it died)."""
    if not fields:
        return None
    text = {jobs.as_text(k): jobs.as_text(v) for k, v in fields.items()}
    heartbeat = text.get("last_heartbeat")
    beat = jobs.epoch(heartbeat)
    pid = text.get("pid", "")
    return WorkerStatus(
        name=key.removeprefix(constants.worker_key("")),
        host=text.get("hostname"),
        pid=int(pid) if pid.isdigit() else None,
        state=text.get("state"),
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
    header = ["QUEUE", "HIGH", "NORMAL", "LOW", "SCHEDULED", "DUE", "RUNNING", "DEAD"]
    header += ["OLDEST WAITING", "WORKERS"]
    rows = [
        [
            q.queue,
            *(str(n) for n in q.waiting.values()),
            *(str(n) for n in (q.scheduled, q.due, q.running, q.dead)),
            _age(q.oldest_waiting_seconds),
            str(q.workers),
        ]
        for q in status.queues
    ]
    lines += _table(header, rows, right=set(range(1, 10)))
    lines.append("")
    if status.workers:
        lines.append(f"WORKERS ({len(status.workers)} alive)")
        header = ["NAME", "HOST", "PID", "STATE", "QUEUES", "HEARTBEAT"]
        rows = [
            [
                w.name,
                w.host or "-",
                str(w.pid or "-"),
                w.state or "-",
                ",".join(w.queues),
                f"{_age(w.heartbeat_age_seconds)} ago",
            ]
            for w in status.workers
        ]
        lines += _table(header, rows, right={2})
    else:
        lines.append("WORKERS: none alive")
    lines.append("")
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
    lines.append("")
    lines.append(
        f"HISTORY: {status.history_pending} events waiting for MongoDB,"
        f" {status.history_dropped} dropped"
    )
    return "\n".join(lines) + "\n"


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
    client = store.connect_async(settings.queue_redis)
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
