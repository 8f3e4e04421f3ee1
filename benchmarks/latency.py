"""Latency: one job every 1/rate s by the clock (open loop), time from send to start.

The service's worker at its defaults against RQ's `SimpleWorker`, both fed straight through
Redis (the service's Store, RQ's `enqueue`). The service runs it twice: with the built-in
`noop` (a plain function, run in a thread lane) and with `bench.async_noop` (an `async def`,
run as a task on the process's loop). Latency is `started_at` minus the *scheduled* send time,
so a client running late counts against the system.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from benchmarks.common import (
    DB_RQ,
    DB_SERVICE,
    QUEUE,
    RQ_NOOP,
    baseline_argv,
    fmt_ratio,
    log,
    percentile,
    wait_until,
)
from benchmarks.harness import HANDLERS, QUEUE_KEY, Bench, Row, defaults_system
from service.store import lua, scripts
from service.store.publish import publish_args

ASYNC = "bench.async_noop"  # the async handler measured beside the built-in (plain) noop


@dataclass
class OpenLoop:
    """Jobs sent on a fixed schedule: the measured ones (id -> scheduled send time) and all."""

    sent: dict[str, float] = field(default_factory=dict)
    total: int = 0  # every job sent, warm-up included: what the worker must finish
    lag: float = 0.0  # worst lateness of a measured send behind its schedule, seconds
    backlog: int = 0  # jobs still waiting in the queue when the last one was sent


def run(bench: Bench) -> None:
    args = bench.args
    # A quarter of the rate too: a rate every worker sustains (not in --quick runs).
    rates = [args.rate] if args.quick else [args.rate, args.rate / 4]
    seconds = args.duration
    log(
        f"\n== latency: open loop (one job every 1/rate s by the clock) for {seconds:g} s "
        f"after a 1 s warm-up, worker at defaults; latency = started_at - scheduled send"
    )
    for number, rate in enumerate(rates):
        service = _latency_service(bench, rate, seconds)
        # The async handler at the main rate only: the two differ in how a job starts.
        service_async = _latency_service(bench, rate, seconds, ASYNC) if number == 0 else {}
        baseline = _latency_rq(bench, rate, seconds)
        if number == 0:
            for name, figures in ((defaults_system(), service), ("RQ SimpleWorker", baseline)):
                system = bench.system(name)
                system.p50_ms, system.p99_ms = figures["p50"], figures["p99"]
        labels = ("p50", "p90", "p99", "max") if number == 0 else ("p50", "p99")
        for handler, figures in (("plain `noop`", service), (f"`{ASYNC}`", service_async)):
            for label in labels if figures else ():
                bench.rows.append(
                    Row(
                        f"Latency send → started_at at {rate:g} jobs/s, {handler}, {label} ms ↓",
                        f"{figures[label]:,.2f}",
                        f"RQ enqueue + SimpleWorker: {baseline[label]:,.2f}",
                        fmt_ratio(figures[label], baseline[label]),
                    )
                )


def _latency_service(
    bench: Bench, rate: float, seconds: float, job_type: str = "noop"
) -> dict[str, float]:
    client = bench.db(DB_SERVICE)
    client.flushdb()
    worker = bench.start_worker(HANDLER_MODULES=HANDLERS)
    meter, started = bench.redis_meter(), time.perf_counter()
    run = _open_loop_service(bench, rate, seconds, job_type)
    bench.wait_finished(client, run.total, timeout=60.0 + run.total / 100)
    usage = meter.report(run.total, time.perf_counter() - started)
    bench.procs.stop(worker)
    name = "service" if job_type == "noop" else "service, async"
    return _latencies(bench, f"{name} @ {rate:g}/s", client, run, usage)


def _latency_rq(bench: Bench, rate: float, seconds: float) -> dict[str, float]:
    client = bench.db(DB_RQ)
    client.flushdb()
    argv = baseline_argv("rq-worker", bench.url(DB_RQ), "run")
    worker = bench.procs.start("rq-worker", argv, bench.env())
    wait_until(lambda: client.scard(f"rq:workers:{QUEUE}") > 0, 30.0, "RQ worker registered")
    meter, started = bench.redis_meter(), time.perf_counter()
    run = _open_loop_rq(bench, rate, seconds)
    bench.wait_finished(client, run.total, timeout=60.0 + run.total / 20)
    usage = meter.report(run.total, time.perf_counter() - started)
    bench.procs.stop(worker)
    return _latencies(bench, f"RQ @ {rate:g}/s", client, run, usage)


def _open_loop_service(bench: Bench, rate: float, seconds: float, job_type: str) -> OpenLoop:
    """Publish one job every 1/rate s by the clock, with the PUBLISH script the API's Store
    runs, from a synchronous loop as the RQ and peer drivers use: `time.sleep` wakes within
    microseconds of the schedule, where an asyncio timer wakes up to a millisecond late
    (epoll's resolution), which would count against the service."""
    client = bench.db(DB_SERVICE)
    publish = lua.Script(client, scripts.PUBLISH)
    publish(publish_args([bench.new_job(job_type)], time.time()))  # load it, connect
    run = OpenLoop(total=1)
    start = time.time() + 0.05
    for i in range(int(rate * (seconds + 1))):
        scheduled = start + i / rate
        delay = scheduled - time.time()
        if delay > 0:
            time.sleep(delay)
        job = bench.new_job(job_type)
        if i >= rate:  # the first second is a warm-up
            run.sent[job.id] = scheduled
            run.lag = max(run.lag, time.time() - scheduled)
        publish(publish_args([job], time.time()))
        run.total += 1
    run.backlog = client.llen(QUEUE_KEY)
    return run


def _open_loop_rq(bench: Bench, rate: float, seconds: float) -> OpenLoop:
    """The same schedule into RQ (a synchronous enqueue; lateness counts in the latency)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue(QUEUE, connection=bench.db(DB_RQ), serializer=JSONSerializer)
    queue.enqueue(RQ_NOOP)
    run = OpenLoop(total=1)
    start = time.time() + 0.05
    for i in range(int(rate * (seconds + 1))):
        scheduled = start + i / rate
        delay = scheduled - time.time()
        if delay > 0:
            time.sleep(delay)
        if i >= rate:
            run.lag = max(run.lag, time.time() - scheduled)
            run.sent[queue.enqueue(RQ_NOOP).id] = scheduled
        else:
            queue.enqueue(RQ_NOOP)
        run.total += 1
    run.backlog = bench.db(DB_RQ).llen(QUEUE_KEY)
    return run


def _latencies(
    bench: Bench, name: str, client: redis.Redis, run: OpenLoop, usage: str
) -> dict[str, float]:
    ids = list(run.sent)
    times = bench.job_times(client, ids, ("enqueued_at", "started_at"))
    if any(t[0] is None or t[1] is None for t in times):
        raise RuntimeError(f"{name}: some jobs have no enqueued_at or started_at")
    send_to_start = sorted(
        ((t[1] or 0.0) - run.sent[job_id]) * 1e3 for job_id, t in zip(ids, times, strict=True)
    )
    queued_to_start = sorted(((t[1] or 0.0) - (t[0] or 0.0)) * 1e3 for t in times)
    figures = {
        label: percentile(send_to_start, p)
        for label, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }
    log(
        f"   {name:<16} send → started_at ms: p50 {figures['p50']:,.2f}, "
        f"p90 {figures['p90']:,.2f}, p99 {figures['p99']:,.2f}, max {figures['max']:,.2f} "
        f"({len(ids):,} jobs); enqueued_at → started_at p50 "
        f"{percentile(queued_to_start, 50):,.2f}, p99 {percentile(queued_to_start, 99):,.2f}; "
        f"client's worst lateness {run.lag * 1e3:.2f} ms; {run.backlog:,} jobs waiting "
        f"when the last was sent\n   {'':<16} per job: {usage}"
    )
    rate = len(ids) / bench.args.duration
    if run.backlog > rate / 2:
        bench.notes.append(
            f"{name}: the worker fell behind ({run.backlog:,} jobs waiting when the last was "
            f"sent), so these latencies measure a growing backlog and grow with --duration"
        )
    return figures
