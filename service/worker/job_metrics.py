"""The worker container's Prometheus metrics, summed over its processes.

Worker processes count jobs with prometheus_client in multiprocess mode: each process writes
its own memory-mapped files in PROMETHEUS_MULTIPROC_DIR (a few files per process, never per
job; `python -m service` makes the folder and removes it on exit). The supervisor adds what
only it knows at scrape time: processes alive, jobs in progress, restarts, and the backlog.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.jobs.states import Fate
from service.telemetry.gauges import BacklogCollector, child

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a millisecond no-op to an hour-long job (or wait).
BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip

STARTED = Counter("service_jobs_started", "Job attempts started", ["type"])
FINISHED = Counter("service_jobs_finished", "Job attempts that succeeded", ["type"])
FAILED = Counter(
    "service_jobs_failed",
    "Job attempts that failed (reason: exception, timeout, result_not_json, result_too_large, "
    "worker_lost)",
    ["type", "reason"],
)
RETRIED = Counter("service_jobs_retried", "Failed attempts scheduled to run again", ["type"])
DEAD = Counter("service_jobs_dead", "Jobs moved to the dead-letter queue", ["type"])
CANCELED = Counter("service_jobs_canceled", "Jobs canceled while held by a worker", ["type"])
INTERRUPTED = Counter(
    "service_jobs_interrupted", "Attempts stopped by a shutdown and put back", ["type"]
)
DURATION = Histogram(
    "service_job_duration_seconds", "Handler run time per attempt", ["type"], buckets=BUCKETS
)
QUEUE_WAIT = Histogram(
    "service_job_queue_wait_seconds",
    "From (re-)enqueue to the start of an attempt",
    ["type"],
    buckets=BUCKETS,
)

# The job types that may become a `type` label: those registered in this process. A job's type
# is read from Redis, where anyone who can write may put any name (`os.system`); any other name
# is counted as `unknown`, so labels never come from untrusted data, and their number is bounded.
_types: frozenset[str] = frozenset()
UNKNOWN = "unknown"


def label_types(names: Iterable[str]) -> None:
    """Set the job types that label metrics (the registry's), once per process."""
    global _types
    _types = frozenset(names)


def _label(job_type: str) -> str:
    return job_type if job_type in _types else UNKNOWN


# The counter each fate adds to (COMPLETE's and RECOVER's replies).
_BY_RESULT = {
    Fate.FINISHED: FINISHED,
    Fate.RETRIED: RETRIED,
    Fate.FAILED: DEAD,
    Fate.CANCELED: CANCELED,
    Fate.INTERRUPTED: INTERRUPTED,
}


def started(job_type: str, enqueued_at: str, now: float) -> None:
    label = _label(job_type)
    child(STARTED, label).inc()
    if enqueued_at:
        wait = now - datetime.fromisoformat(enqueued_at).timestamp()
        child(QUEUE_WAIT, label).observe(max(wait, 0.0))


def ended(job_type: str, result: Fate, reason: str, duration: float | None) -> None:
    """One attempt's end, as COMPLETE or RECOVER decided it."""
    label = _label(job_type)
    if result in _BY_RESULT:
        child(_BY_RESULT[result], label).inc()
    if result in (Fate.RETRIED, Fate.FAILED):
        child(FAILED, label, reason).inc()
    if duration is not None:
        child(DURATION, label).observe(duration)


class SupervisorCollector(Collector):
    """Live figures the supervisor reads from its process table and shared memory."""

    def __init__(self, figures: Callable[[], tuple[int, int, int, int]]) -> None:
        self.figures = figures  # () -> (processes alive, slots busy, slots in all, restarts)

    def collect(self) -> Iterator[Metric]:
        alive, busy, total, restarts = self.figures()
        yield GaugeMetricFamily(
            "service_worker_processes", "Worker processes alive in this container", value=alive
        )
        yield GaugeMetricFamily(
            "service_jobs_in_progress", "Jobs running in this container now", value=busy
        )
        yield GaugeMetricFamily(
            "service_worker_slots_busy",
            "Slots running a job now (WORKER_CONCURRENCY per live process)",
            value=busy,
        )
        yield GaugeMetricFamily(
            "service_worker_slots",
            "Slots in this container: live processes x WORKER_CONCURRENCY",
            value=total,
        )
        yield CounterMetricFamily(
            "service_worker_process_restarts",
            "Worker processes that died and were restarted",
            value=restarts,
        )


class HistoryCollector(Collector):
    """The container's history shipper (MONGODB_URI only): whether it runs, and the events
    MongoDB could not store whole."""

    def __init__(self, figures: Callable[[], tuple[bool, int, int] | None]) -> None:
        self.figures = figures  # () -> (running, stored in part, not stored); None: no shipper

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        if figures is None:
            return
        running, in_part, dropped = figures
        yield GaugeMetricFamily(
            "service_history_shipper_up",
            "1 while this container's job history shipper runs, 0 once it has stopped",
            value=int(running),
        )
        unstorable = CounterMetricFamily(
            "service_history_unstorable_events",
            "History events MongoDB could not store whole: stored_in_part (a part replaced "
            "by a marker) or dropped",
            labels=["outcome"],
        )
        unstorable.add_metric(["stored_in_part"], in_part)
        unstorable.add_metric(["dropped"], dropped)
        yield unstorable


def registry(live: Collector, backlog: BacklogCollector, history: Collector) -> CollectorRegistry:
    """What the health server's /metrics shows: every process's counts, plus live figures."""
    collected = CollectorRegistry()
    MultiProcessCollector(collected, os.environ[MULTIPROC_DIR])  # type: ignore[no-untyped-call]
    collected.register(live)
    collected.register(backlog)
    collected.register(history)
    return collected
