"""Drain: N no-op jobs queued before the worker starts, timed from first start to last end.

The service at its defaults (WORKER_PROCESSES: one process per CPU the container may use;
WORKER_CONCURRENCY=5 jobs in flight per process; WORKER_BATCH_SIZE=50) and with one process,
against plain RQ's `SimpleWorker` on N/10 jobs. Also the RSS of each worker process after
its drain.
"""

from __future__ import annotations

import re
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass

from benchmarks.common import (
    DB_RQ,
    DB_SERVICE,
    POLL,
    QUEUE,
    RQ_NOOP,
    Child,
    baseline_argv,
    cpu_seconds,
    fmt_rate,
    fmt_ratio,
    log,
    vm_kib,
    worker_pids,
)
from benchmarks.harness import (
    DEFAULTS,
    FAILED_KEY,
    FINISHED_KEY,
    PUBLISH_CHUNK,
    QUEUE_KEY,
    Bench,
    Row,
    defaults_system,
)
from benchmarks.peers import install
from benchmarks.peers import phase as peers
from benchmarks.redis_meter import RedisCost
from service.config import constants, cpus

PARKED_KEY = "bench:parked"  # the pre-loaded queue waits here until every worker is ready
WAKE_KEY = constants.wake_key(QUEUE)  # idle workers block on it; PUBLISH leaves a token
RQ_BATCH = 1000  # jobs per enqueue_many call when pre-loading RQ


@dataclass
class DrainResult:
    finished: int
    failed: int
    span: float  # first started_at to last ended_at
    wall: str  # the same drain by the wall clock, for comparison
    cpu: str  # where the CPU went: the workers' and redis-server's, per job
    redis: RedisCost
    rss_kib: list[int]  # per worker process, after the drain
    hwm_kib: list[int]
    supervisor_rss_kib: int = 0

    @property
    def rate(self) -> float:
        return self.finished / self.span if self.span > 0 else 0.0

    def describe(self, label: str) -> str:
        return (
            f"   {label:<22} {self.finished:>7,} finished, {self.failed} failed: "
            f"first started_at → last ended_at {self.span:.3f} s = "
            f"{self.rate:,.0f} jobs/s ({self.wall})\n   {'':<22} {self.cpu}"
        )


def run(bench: Bench) -> None:
    n, n_rq = bench.args.jobs, bench.args.rq_jobs
    log(f"\n== drain: {n:,} no-op jobs pre-loaded, then the worker started")
    default = drain_service(bench, n)
    if bench.args.peers:
        default = _against_bullmq(bench, n, default)
    single = drain_service(bench, n, processes=1)
    baseline = drain_rq(bench, n_rq)
    for label, result, system in (
        (DEFAULTS, default, defaults_system()),
        ("service, 1 process", single, "service, 1 process"),
        ("RQ SimpleWorker", baseline, "RQ SimpleWorker"),
    ):
        log(result.describe(label))
        bench.costs[f"drain: {label}"] = result.redis
        figures = bench.system(system)
        figures.drain, figures.drain_jobs = result.rate, result.finished
        figures.redis_us = result.redis.cpu_us_per_job
        figures.redis_commands = result.redis.commands_per_job
        figures.rss_mib = sum(result.rss_kib) / len(result.rss_kib) / 1024
    rq_figure = f"RQ SimpleWorker ({n_rq:,} jobs): {fmt_rate(baseline.rate, 'jobs/s')}"
    for result, setting in (
        (
            default,
            "defaults: WORKER_PROCESSES = the CPUs, WORKER_CONCURRENCY=5, WORKER_BATCH_SIZE=50",
        ),
        (single, "WORKER_PROCESSES=1: one process each"),
    ):
        bench.rows.append(
            Row(
                f"Drain {n:,} no-op jobs, jobs/s ↑ ({setting})",
                fmt_rate(result.rate, "jobs/s"),
                rq_figure,
                fmt_ratio(result.rate, baseline.rate),
            )
        )
    _memory_rows(bench, default, baseline)


def _against_bullmq(bench: Bench, n: int, first: DrainResult) -> DrainResult:
    """BullMQ at concurrency 50 drains the same jobs, it and the service alternating for
    --rounds rounds (a shared machine drifts from minute to minute); the service's median
    round is returned, and the median ratio goes into the report."""
    config = peers.PeerConfig("BullMQ (Node), concurrency 50", "bullmq", 1, 50, "drain")
    peer = install.ensure("bullmq")
    if not peer.ok:
        log(f"   BullMQ: {peer.message}")
        return first
    ours, theirs = [first], []
    for number in range(bench.args.rounds):
        try:
            theirs.append(float(peers.measure(bench, peer, config)["drain"]["rate"]))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"   BullMQ: failed: {exc}")
            return first
        log(
            f"   round {number + 1}: service {ours[-1].rate:,.0f} jobs/s, "
            f"BullMQ c50 {theirs[-1]:,.0f}"
        )
        if number + 1 < bench.args.rounds:
            ours.append(drain_service(bench, n))
    median = sorted(ours, key=lambda r: r.rate)[len(ours) // 2]
    bullmq = statistics.median(theirs)
    rounds = ", ".join(f"{a.rate:,.0f}/{b:,.0f}" for a, b in zip(ours, theirs, strict=True))
    bench.rows.append(
        Row(
            f"Drain {n:,} no-op jobs at defaults against BullMQ at concurrency 50, jobs/s ↑ "
            f"(median of {len(ours)} alternating rounds; rounds, service/BullMQ: {rounds})",
            fmt_rate(median.rate, "jobs/s"),
            f"BullMQ 6.7, concurrency 50: {fmt_rate(bullmq, 'jobs/s')}",
            fmt_ratio(median.rate, bullmq),
        )
    )
    return median


def preload_parked(bench: Bench, n: int, job_type: str = "noop") -> list[str]:
    """Empty the service's db, publish `n` jobs and park the queue (not yet visible)."""
    client = bench.db(DB_SERVICE)
    client.flushdb()
    started = time.perf_counter()
    ids = bench.publish_noops(n, job_type)
    log(
        f"   published {n:,} {job_type} jobs with the service's Store (PUBLISH script, "
        f"{PUBLISH_CHUNK} per call) in {time.perf_counter() - started:.2f} s"
    )
    assert client.llen(QUEUE_KEY) == n
    client.rename(QUEUE_KEY, PARKED_KEY)
    return ids


def start_and_release(
    bench: Bench, processes: int | None = None, concurrency: int = 5, **extra: str
) -> tuple[Child, list[int]]:
    """Start the worker (`processes` None: the default, one per CPU; `extra`: more settings),
    wait until every process consumes; the caller then puts the queue back."""
    started = time.perf_counter()
    worker = bench.start_worker(processes, concurrency, **extra)
    count = processes or cpus.available()
    log(
        f"   worker up, {count} processes x {concurrency} slots consuming after "
        f"{time.perf_counter() - started:.2f} s; releasing the queue"
    )
    return worker, worker_pids(worker.pid)


def release(bench: Bench, processes: int) -> None:
    """Put the parked queue back, with one wake-up token per worker process, in one
    transaction: what publishing the jobs now would leave (each PUBLISH pushes a token for an
    idle worker's BLPOP). Without the tokens each process would find the jobs only when its
    BLPOP times out, up to 0.5 s later, each at its own moment."""
    with bench.db(DB_SERVICE).pipeline(transaction=True) as pipe:
        pipe.rename(PARKED_KEY, QUEUE_KEY)
        pipe.lpush(WAKE_KEY, *[1] * processes)
        pipe.execute()


def drain_service(
    bench: Bench, n: int, processes: int | None = None, concurrency: int = 5
) -> DrainResult:
    client = bench.db(DB_SERVICE)
    ids = preload_parked(bench, n)
    worker, workers = start_and_release(bench, processes, concurrency)
    workers_cpu, meter = sum(map(cpu_seconds, workers)), bench.redis_meter()
    released = time.perf_counter()
    release(bench, len(workers))
    finished, failed = bench.wait_finished(client, n, timeout=max(60.0, n / 200))
    elapsed = time.perf_counter() - released
    redis = meter.cost(n, elapsed)
    workers_cpu = sum(map(cpu_seconds, workers)) - workers_cpu
    wall = f"release to all finished, {POLL * 1e3:.0f} ms polls: {elapsed:.3f} s"
    cpu = (
        f"CPU per job: worker processes {workers_cpu / n * 1e6:.0f} µs "
        f"({workers_cpu / elapsed:.0%} of a core); {redis.describe()}"
    )
    rss = [vm_kib(pid) for pid in workers]
    hwm = [vm_kib(pid, "VmHWM") for pid in workers]
    supervisor_rss = vm_kib(worker.pid)
    bench.procs.stop(worker)
    span = bench.drain_span(client, ids)
    return DrainResult(finished, failed, span, wall, cpu, redis, rss, hwm, supervisor_rss)


def _children_cpu() -> float:
    """CPU time of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain_rq(bench: Bench, n: int) -> DrainResult:
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = bench.db(DB_RQ)
    client.flushdb()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    started = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, RQ_BATCH):
        count = min(RQ_BATCH, n - start)
        ids += [j.id for j in queue.enqueue_many([Queue.prepare_data(RQ_NOOP)] * count)]
    log(
        f"   enqueued {n:,} jobs with RQ's Queue.enqueue_many in "
        f"{time.perf_counter() - started:.2f} s; starting SimpleWorker.work(burst=True)"
    )
    argv = baseline_argv("rq-worker", bench.url(DB_RQ), "burst")
    worker = bench.procs.start("rq-worker", argv, bench.env())
    started = time.perf_counter()
    children_cpu, meter = _children_cpu(), bench.redis_meter()
    code = worker.process.wait(timeout=max(120.0, n / 50))
    elapsed = time.perf_counter() - started
    redis = meter.cost(n, elapsed)
    worker_cpu = _children_cpu() - children_cpu
    wall = f"process start to exit, start-up included: {elapsed:.2f} s"
    cpu = (
        f"CPU per job: worker process {worker_cpu / n * 1e6:.0f} µs with its start-up "
        f"({worker_cpu / elapsed:.0%} of a core); {redis.describe()}"
    )
    if code != 0:
        raise RuntimeError(f"RQ worker exited with {code}:\n{worker.tail()}")
    report = re.search(r"VmRSS=(\d+) VmHWM=(\d+)", worker.log_path.read_text())
    assert report is not None, worker.tail()
    bench.procs.stop(worker)
    finished, failed = client.zcard(FINISHED_KEY), client.zcard(FAILED_KEY)
    span = bench.drain_span(client, ids)
    rss, hwm = int(report.group(1)), int(report.group(2))
    return DrainResult(finished, failed, span, wall, cpu, redis, [rss], [hwm])


def _memory_rows(bench: Bench, service: DrainResult, baseline: DrainResult) -> None:
    mib = [kib / 1024 for kib in service.rss_kib]
    rq_mib = baseline.rss_kib[0] / 1024
    mean = sum(mib) / len(mib)
    log(
        f"\n== memory after the drain (VmRSS; VmHWM is the peak)\n"
        f"   service worker processes: {', '.join(f'{m:.1f}' for m in mib)} MiB "
        f"(peaks {', '.join(f'{k / 1024:.1f}' for k in service.hwm_kib)}); "
        f"supervisor {service.supervisor_rss_kib / 1024:.1f} MiB\n"
        f"   RQ SimpleWorker: {rq_mib:.1f} MiB (peak {baseline.hwm_kib[0] / 1024:.1f})"
    )
    bench.rows.append(
        Row(
            "Memory: RSS per worker process after the drain, MiB ↓",
            f"{mean:.1f} (min {min(mib):.1f}, max {max(mib):.1f}, {len(mib)} processes)",
            f"RQ SimpleWorker: {rq_mib:.1f}",
            fmt_ratio(mean, rq_mib),
        )
    )
    total = sum(mib) + service.supervisor_rss_kib / 1024
    bench.rows.append(
        Row(
            f"Memory: whole worker container (supervisor + {len(mib)} processes), MiB ↓",
            f"{total:.1f}",
            f"RQ SimpleWorker: {rq_mib:.1f}",
            fmt_ratio(total, rq_mib),
        )
    )
