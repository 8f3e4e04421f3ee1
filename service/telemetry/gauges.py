"""The backlog gauges both modes export on /metrics, and the text exposition.

Per named queue (its three priority lists summed where a figure has no `priority` label):
waiting, scheduled, due, running and dead jobs, the oldest waiting job's age, the live
workers serving it and whether it is paused (also for a paused queue this process does not
serve: a pause of a queue no one serves shows); the dead jobs trimmed by DEAD_MAX_JOBS so
far; and the schedules' figures (service/telemetry/schedule_gauges.py). Two pipelined round
trips, no key scans: cheap enough to refresh every
WORKER_PROCESSING_INTERVAL, which is when both modes refresh them (the worker supervisor
during housekeeping, the API when scraped and its figures are older than that).

Every worker container and every API process exports the same figures: aggregate them with
`max by (queue)`, never `sum`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.config import constants
from service.config.queues import PRIORITIES, concrete
from service.config.queues import base as base_of
from service.jobs import records
from service.telemetry import schedule_gauges
from service.telemetry.schedule_gauges import ScheduleFigures

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PER_LIST = 6  # commands per priority list in the first round trip


class Pipeline(Protocol):
    """What a redis(-py) pipeline offers, sync or async: commands queue until executed."""

    def llen(self, name: str) -> Any: ...
    def zcard(self, name: str) -> Any: ...
    def zcount(self, name: str, min: float | str, max: float | str) -> Any: ...
    def lindex(self, name: str, index: int) -> Any: ...
    def smembers(self, name: str) -> Any: ...
    def xlen(self, name: str) -> Any: ...
    def hget(self, name: str, key: str) -> Any: ...
    def exists(self, *names: str | bytes) -> Any: ...
    def get(self, name: str) -> Any: ...
    def zrange(self, name: str, start: int, end: int) -> Any: ...
    def hmget(self, name: str, keys: list[str]) -> Any: ...


@dataclass(slots=True)
class QueueFigures:
    waiting: dict[str, int] = field(default_factory=dict)  # per priority
    scheduled: int = 0
    due: int = 0
    running: int = 0
    dead: int = 0
    oldest_age: float = 0.0  # seconds the head of the oldest non-empty list has waited
    workers: int = 0
    paused: bool = False  # a priority of it is paused (PAUSED_KEY): workers claim none of it


@dataclass(slots=True)
class Snapshot:
    queues: dict[str, QueueFigures]
    history_pending: int
    taken_at: float  # monotonic
    dead_trimmed: int = 0  # dead jobs removed to keep within DEAD_MAX_JOBS, ever (a counter)
    schedules: dict[str, ScheduleFigures] = field(default_factory=dict)
    paused_elsewhere: tuple[str, ...] = ()  # paused queues not among the plan's


class BacklogPlan:
    """The commands that read the backlog of `bases`, in two rounds, and their decoding.

    Sync and async clients share it: each runs `first` on a pipeline, executes, runs
    `second` with the replies, executes, and hands both replies to `snapshot`.
    """

    def __init__(self, bases: Iterable[str]) -> None:
        self.bases = sorted(set(bases))

    def first(self, pipe: Pipeline, now: float) -> None:
        for base in self.bases:
            for priority in PRIORITIES:
                q = concrete(base, priority)
                pipe.llen(constants.queue_key(q))
                pipe.zcard(constants.registry_key("scheduled", q))
                pipe.zcount(constants.registry_key("scheduled", q), "-inf", now)
                pipe.zcard(constants.registry_key("started", q))
                pipe.zcount(constants.registry_key("failed", q), now, "+inf")
                pipe.lindex(constants.queue_key(q), 0)
            pipe.smembers(constants.queue_workers_key(base))
        pipe.xlen(constants.HISTORY_STREAM)
        pipe.get(constants.DEAD_TRIMMED_KEY)
        pipe.smembers(constants.PAUSED_KEY)
        schedule_gauges.first(pipe)

    def second(self, pipe: Pipeline, replies: Sequence[Any]) -> None:
        """When each list's head was enqueued, and which registered workers are alive."""
        for heads, members in self._per_base(replies):
            for head in heads:
                pipe.hget(constants.job_key(records.as_text(head)), "enqueued_at")
            for key in members:
                pipe.exists(key)
        schedule_gauges.second(pipe, replies[-1])

    def snapshot(self, first: Sequence[Any], second: Sequence[Any]) -> Snapshot:
        now = time.time()
        answers = iter(second)
        figures: dict[str, QueueFigures] = {}
        stride = _PER_LIST * len(PRIORITIES) + 1
        paused = {base_of(records.as_text(member)) for member in first[-2]}
        for index, (heads, members) in enumerate(self._per_base(first)):
            rows = first[index * stride : index * stride + stride - 1]
            queue = QueueFigures()
            for p, priority in enumerate(PRIORITIES):
                waiting, scheduled, due, running, dead, _ = rows[
                    p * _PER_LIST : (p + 1) * _PER_LIST
                ]
                queue.waiting[priority] = int(waiting)
                queue.scheduled += int(scheduled)
                queue.due += int(due)
                queue.running += int(running)
                queue.dead += int(dead)
            for _ in heads:
                enqueued = next(answers)
                since = records.epoch(records.as_text(enqueued)) if enqueued else None
                if since is not None:
                    queue.oldest_age = max(queue.oldest_age, now - since, 0.0)
            queue.workers = sum(bool(next(answers)) for _ in members)
            queue.paused = self.bases[index] in paused
            figures[self.bases[index]] = queue
        schedules = schedule_gauges.decode(first[-1], answers)
        return Snapshot(
            figures,
            int(first[-4]),
            time.monotonic(),
            int(first[-3] or 0),
            schedules,
            tuple(sorted(paused - set(self.bases))),
        )

    def _per_base(self, replies: Sequence[Any]) -> Iterator[tuple[list[Any], list[Any]]]:
        """Per base queue: the non-empty lists' head ids, and the worker registrations."""
        stride = _PER_LIST * len(PRIORITIES) + 1
        for index in range(len(self.bases)):
            rows = replies[index * stride : (index + 1) * stride]
            heads = [rows[p * _PER_LIST + 5] for p in range(len(PRIORITIES))]
            yield [h for h in heads if h is not None], sorted(rows[-1])


# The per-queue gauges: (QueueFigures attribute, metric name, help).
_PER_QUEUE = (
    ("scheduled", "service_queue_scheduled_jobs", "Jobs scheduled for later (delays, retries)"),
    ("due", "service_queue_due_jobs", "Scheduled jobs already due, not yet moved"),
    ("running", "service_queue_running_jobs", "Jobs started and not yet ended"),
    ("dead", "service_queue_dead_jobs", "Jobs in the dead-letter queue"),
    (
        "oldest_age",
        "service_queue_oldest_job_age_seconds",
        "How long the oldest waiting job has waited (0 when none waits)",
    ),
    ("workers", "service_queue_workers", "Live worker processes serving the queue"),
    (
        "paused",
        "service_queue_paused",
        "1 while the queue is paused: workers start none of its jobs",
    ),
)


class BacklogCollector(Collector):
    """Yields the latest snapshot as gauges; nothing while Redis could not be read."""

    def __init__(self) -> None:
        self.latest: Snapshot | None = None

    def stale(self, max_age: float) -> bool:
        return self.latest is None or time.monotonic() - self.latest.taken_at >= max_age

    def collect(self) -> Iterator[Metric]:
        snapshot = self.latest
        if snapshot is None:
            return
        waiting = GaugeMetricFamily(
            "service_queue_waiting_jobs",
            "Jobs waiting in a queue's list",
            labels=["queue", "priority"],
        )
        families = {
            attribute: GaugeMetricFamily(name, text, labels=["queue"])
            for attribute, name, text in _PER_QUEUE
        }
        for queue, figures in snapshot.queues.items():
            for priority, count in figures.waiting.items():
                waiting.add_metric([queue, priority], count)
            for attribute, family in families.items():
                family.add_metric([queue], getattr(figures, attribute))
        for queue in snapshot.paused_elsewhere:
            families["paused"].add_metric([queue], 1)
        yield waiting
        yield from families.values()
        yield GaugeMetricFamily(
            "service_history_pending_events",
            "Job history events waiting in Redis to be written to MongoDB",
            value=snapshot.history_pending,
        )
        yield CounterMetricFamily(
            "service_dead_trimmed_jobs",
            "Dead jobs removed, oldest first, to keep a queue's dead-letter queue within "
            "DEAD_MAX_JOBS",
            value=snapshot.dead_trimmed,
        )
        yield from schedule_gauges.families(snapshot.schedules)


def read_backlog(client: Any, plan: BacklogPlan) -> Snapshot:
    """The snapshot, with a synchronous client (the worker supervisor)."""
    with client.pipeline(transaction=False) as pipe:
        plan.first(pipe, time.time())
        first = pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        plan.second(pipe, first)
        second = pipe.execute()
    return plan.snapshot(first, second)


async def read_backlog_async(client: Any, plan: BacklogPlan) -> Snapshot:
    """The snapshot, with an asyncio client (the API)."""
    async with client.pipeline(transaction=False) as pipe:
        plan.first(pipe, time.time())
        first = await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        plan.second(pipe, first)
        second = await pipe.execute()
    return plan.snapshot(first, second)


@functools.cache
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, once per label set: labels() costs microseconds, and jobs and
    requests count on the hot path. Label values are bounded (route templates, job types)."""
    return metric.labels(*labels)


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
