"""Publishing jobs: over HTTP (one job per POST, and batches) and straight into Redis.

HTTP: `POST /jobs` on one API process against a bare Starlette + one LPUSH endpoint and a
Starlette endpoint calling RQ's `enqueue`; `POST /jobs/batch` against RQ's `enqueue_many`.
Direct (`enqueue`): one job at a time from one client, and 1,000 per call, service vs RQ.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from benchmarks.baselines import LPUSH_KEY
from benchmarks.common import (
    DB_LPUSH,
    DB_RQ,
    DB_SERVICE,
    QUEUE,
    RQ_NOOP,
    Child,
    cpu_seconds,
    fmt_rate,
    fmt_ratio,
    log,
)
from benchmarks.harness import QUEUE_KEY, Bench, Row, defaults_system
from benchmarks.loadgen import Load, combined, run_load
from benchmarks.redis_meter import RedisCost
from service.store.publisher import Store

HTTP_CONNECTIONS = 64
HTTP_ROUNDS = 5
HTTP_PROCESSES = (1, 2)  # the ceilings: one uvicorn process, and two
BATCH_CONNECTIONS = 4
BATCH_JOBS = 1000  # jobs per POST /jobs/batch (the service's maximum) and per enqueue_many
SINGLE_BODY = b'{"type":"noop"}'


@dataclass
class HttpTarget:
    """A server under HTTP load, and the Redis list where its accepted jobs land."""

    name: str
    url: str
    server: Child
    db: int
    list_key: str


def batch_body() -> bytes:
    return orjson.dumps({"jobs": [{"type": "noop"}] * BATCH_JOBS})


# --- one job per POST -----------------------------------------------------------------------


def run_http(bench: Bench) -> None:
    medians: dict[int, Load] = {}  # the service's median round, by server processes
    for processes in HTTP_PROCESSES:
        log(
            f"\n== HTTP POST /jobs {SINGLE_BODY.decode()}: {bench.generator}, "
            f"{HTTP_CONNECTIONS} connections, {bench.args.duration:g} s each, {processes} server "
            f"process(es) each; the service and the bare LPUSH app alternate for {HTTP_ROUNDS} "
            "rounds, the median round is reported"
        )
        service, lpush, cost = _alternating_rounds(bench, processes)
        each = "one process each" if processes == 1 else f"{processes} processes each"
        label = (
            f"HTTP POST /jobs, 2xx/s ↑ ({bench.generator}, {HTTP_CONNECTIONS} connections, {each})"
        )
        bench.rows.append(
            _http_row(label, service, "bare Starlette + one redis.asyncio LPUSH", lpush)
        )
        medians[processes] = service
        if processes == 1:
            bench.costs["publish: POST /jobs, service"] = cost
    server, base = bench.start_baseline_server("rq", DB_RQ)
    target = HttpTarget("Starlette + RQ enqueue", f"{base}/jobs", server, DB_RQ, QUEUE_KEY)
    rq, cost = measure_http(bench, [target], SINGLE_BODY, HTTP_CONNECTIONS, 1)
    bench.costs["publish: Starlette + RQ enqueue"] = cost
    bench.procs.stop(server)
    label = f"HTTP POST /jobs, 2xx/s ↑ ({bench.generator}, {HTTP_CONNECTIONS} connections)"
    bench.rows.append(
        _http_row(label, medians[1], "Starlette + RQ Queue.enqueue in a threadpool", rq)
    )


def _http_row(label: str, service: Load, name: str, baseline: Load) -> Row:
    return Row(
        label,
        f"{fmt_rate(service.ok_per_second, 'req/s')} (non-2xx: {service.non_2xx})",
        f"{name}: {fmt_rate(baseline.ok_per_second, 'req/s')} (non-2xx: {baseline.non_2xx})",
        fmt_ratio(service.ok_per_second, baseline.ok_per_second),
    )


def _alternating_rounds(bench: Bench, processes: int) -> tuple[Load, Load, RedisCost]:
    """The service and the bare LPUSH app (`processes` server processes each, sharing the
    connections), one after the other, HTTP_ROUNDS times, which goes first alternating: on
    this shared machine one pair of runs can land on a fast and a slow minute. The round with
    the median ratio is kept (its service and baseline figures, and the service's Redis cost)."""
    ours, bare = [], []
    for _ in range(processes):
        api, api_base = bench.start_api()
        ours.append(HttpTarget("service", f"{api_base}/jobs", api, DB_SERVICE, QUEUE_KEY))
        server, base = bench.start_baseline_server("lpush", DB_LPUSH)
        bare.append(
            HttpTarget("bare Starlette + LPUSH", f"{base}/jobs", server, DB_LPUSH, LPUSH_KEY)
        )
    rounds = []
    for number in range(HTTP_ROUNDS):
        first, second = (ours, bare) if number % 2 == 0 else (bare, ours)
        a = measure_http(bench, first, SINGLE_BODY, HTTP_CONNECTIONS, 1)
        b = measure_http(bench, second, SINGLE_BODY, HTTP_CONNECTIONS, 1)
        (service, cost), (lpush, _) = (a, b) if first is ours else (b, a)
        ratio = service.ok_per_second / lpush.ok_per_second if lpush.ok_per_second else 0.0
        rounds.append((ratio, service, lpush, cost))
    for target in ours + bare:
        bench.procs.stop(target.server)
    rounds.sort(key=lambda r: r[0])
    ratio, service, lpush, cost = rounds[len(rounds) // 2]
    ratios = ", ".join(f"{r[0]:.3g}x" for r in rounds)
    log(f"   service / bare LPUSH by round (sorted): {ratios}; median {ratio:.3g}x")
    return service, lpush, cost


def service_single_post(bench: Bench) -> tuple[Load, RedisCost]:
    """`POST /jobs` on one API process of the service, against the current Redis."""
    api, base = bench.start_api()
    target = HttpTarget("service", f"{base}/jobs", api, DB_SERVICE, QUEUE_KEY)
    result = measure_http(bench, [target], SINGLE_BODY, HTTP_CONNECTIONS, 1)
    bench.procs.stop(api)
    return result


def service_batch_post(bench: Bench) -> tuple[Load, RedisCost]:
    """`POST /jobs/batch` x 1,000 jobs, 4 clients, one API process, against the current Redis."""
    api, base = bench.start_api()
    target = HttpTarget("service /jobs/batch", f"{base}/jobs/batch", api, DB_SERVICE, QUEUE_KEY)
    result = measure_http(bench, [target], batch_body(), BATCH_CONNECTIONS, BATCH_JOBS)
    bench.procs.stop(api)
    return result


def measure_http(
    bench: Bench, targets: list[HttpTarget], body: bytes, connections: int, jobs_per_request: int
) -> tuple[Load, RedisCost]:
    """Warm up for a second, empty the database, measure, then count what Redis holds. With
    several targets (processes of one server, on one database) the connections are shared
    out and every target is loaded at once, by a load generator each."""
    seconds = bench.args.duration
    share = connections // len(targets)
    name, db, list_key = targets[0].name, targets[0].db, targets[0].list_key
    assert all((t.db, t.list_key) == (db, list_key) for t in targets)

    def load_all(duration: float) -> Load:
        def one(target: HttpTarget) -> Load:
            return run_load(bench.generator, target.url, body, share, duration, bench.work_dir)

        with ThreadPoolExecutor(len(targets)) as pool:
            return combined(list(pool.map(one, targets)))

    load_all(1.0)
    time.sleep(0.3)
    bench.db(db).flushdb()
    pids = [t.server.pid for t in targets]
    server_cpu, meter = sum(map(cpu_seconds, pids)), bench.redis_meter()
    load = load_all(seconds)
    time.sleep(0.5)  # let the server finish the requests in flight at the cut-off
    server_cpu = sum(map(cpu_seconds, pids)) - server_cpu
    stored = bench.db(db).llen(list_key)
    cost = meter.cost(max(1, stored), load.seconds)
    expected = load.ok * jobs_per_request
    extra = stored - expected
    slack = 0 if load.exact else connections * jobs_per_request
    verdict = "OK" if 0 <= extra <= slack else "MISMATCH"
    by_status = {k: v for k, v in load.statuses.items() if not 200 <= k < 400}
    name = name if len(targets) == 1 else f"{name} x{len(targets)}"
    log(
        f"   {name:<24} {fmt_rate(load.ok_per_second, 'req/s'):>12} 2xx "
        f"({load.ok:,} in {load.seconds:.2f} s; p50 {load.p50_ms:.1f} ms, "
        f"p99 {load.p99_ms:.1f} ms; non-2xx {load.non_2xx}{by_status or ''}; socket errors: "
        f"{load.socket_errors})"
    )
    cut = "" if load.exact else f"; in flight when wrk stopped: 0..{slack} allowed"
    log(f"   {'':<24} jobs in Redis {stored:,} vs accepted {expected:,}: {extra:+,}{cut}")
    log(f"   {'':<24} → {verdict}")
    log(
        f"   {'':<24} per job: server process(es) {server_cpu / max(1, stored) * 1e6:.0f} µs CPU "
        f"({server_cpu / load.seconds:.0%} of a core); {cost.describe()}"
    )
    if verdict != "OK":
        bench.notes.append(f"{name}: Redis holds {stored:,} jobs for {expected:,} accepted")
    if load.non_2xx:  # say why: the servers' last log lines
        for target in targets:
            log(f"   {'':<24} {target.server.name} log:\n{target.server.tail(8)}")
    return load, cost


# --- batches over HTTP ----------------------------------------------------------------------


def run_batch(bench: Bench) -> None:
    seconds = bench.args.duration
    log(
        f"\n== batch publish: POST /jobs/batch with {BATCH_JOBS} no-op jobs per request, "
        f"{BATCH_CONNECTIONS} concurrent clients ({bench.generator}), {seconds:g} s"
    )
    load, cost = service_batch_post(bench)
    bench.costs["publish: POST /jobs/batch x 1000, service"] = cost
    service_rate = load.ok_per_second * BATCH_JOBS
    baseline_rate, cost = rq_enqueue_rate(bench, seconds, BATCH_JOBS)
    bench.costs["publish: RQ enqueue_many x 1000"] = cost
    log(
        f"   service: {fmt_rate(service_rate, 'jobs/s')}; RQ Queue.enqueue_many "
        f"({BATCH_JOBS} per call, one client process): {fmt_rate(baseline_rate, 'jobs/s')}"
    )
    bench.rows.append(
        Row(
            f"Batch publish, jobs/s ↑ (POST /jobs/batch x {BATCH_JOBS}, "
            f"{BATCH_CONNECTIONS} clients, one API process)",
            f"{fmt_rate(service_rate, 'jobs/s')} (non-2xx: {load.non_2xx})",
            f"RQ Queue.enqueue_many x {BATCH_JOBS}, called directly: "
            f"{fmt_rate(baseline_rate, 'jobs/s')}",
            fmt_ratio(service_rate, baseline_rate),
        )
    )


# --- straight into Redis, no HTTP -----------------------------------------------------------


def run_enqueue(bench: Bench) -> None:
    seconds = min(bench.args.duration, 5.0)
    log(f"\n== enqueue from one client, no HTTP: one job per call, and {BATCH_JOBS} per call")
    single = asyncio.run(_service_enqueue_rate(bench, seconds, 1))
    bulk = asyncio.run(_service_enqueue_rate(bench, seconds, BATCH_JOBS))
    rq_single, _ = rq_enqueue_rate(bench, seconds, 1)
    rq_bulk, _ = rq_enqueue_rate(bench, seconds, BATCH_JOBS)
    log(
        f"   service Store.publish: {fmt_rate(single, 'jobs/s')} one by one, "
        f"{fmt_rate(bulk, 'jobs/s')} x {BATCH_JOBS}\n"
        f"   RQ Queue.enqueue: {fmt_rate(rq_single, 'jobs/s')} one by one; "
        f"enqueue_many x {BATCH_JOBS}: {fmt_rate(rq_bulk, 'jobs/s')}"
    )
    for name in (defaults_system(), "service, 1 process"):
        figures = bench.system(name)
        figures.enqueue, figures.bulk, figures.bulk_how = single, bulk, "Store.publish x 1000"
    figures = bench.system("RQ SimpleWorker")
    figures.enqueue, figures.bulk, figures.bulk_how = rq_single, rq_bulk, "enqueue_many x 1000"
    bench.rows.append(
        Row(
            "Enqueue one by one from one client, no HTTP, jobs/s ↑",
            f"Store.publish: {fmt_rate(single, 'jobs/s')}",
            f"RQ Queue.enqueue: {fmt_rate(rq_single, 'jobs/s')}",
            fmt_ratio(single, rq_single),
        )
    )
    bench.rows.append(
        Row(
            f"Bulk enqueue x {BATCH_JOBS} from one client, no HTTP, jobs/s ↑",
            f"Store.publish: {fmt_rate(bulk, 'jobs/s')}",
            f"RQ Queue.enqueue_many: {fmt_rate(rq_bulk, 'jobs/s')}",
            fmt_ratio(bulk, rq_bulk),
        )
    )


async def _service_enqueue_rate(bench: Bench, seconds: float, per_call: int) -> float:
    bench.db(DB_SERVICE).flushdb()
    client = aioredis.Redis(port=bench.server.port, db=DB_SERVICE)
    store = Store(client)
    try:

        def call() -> Awaitable[None]:
            return store.publish([bench.noop_job() for _ in range(per_call)])

        rate = await _async_rate(call, per_call, seconds)
    finally:
        await client.aclose()
    return rate


async def _async_rate(call: Callable[[], Awaitable[None]], per_call: int, seconds: float) -> float:
    await call()  # warm-up: loads the script, opens the connection
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        await call()
        done += per_call
    return done / (time.perf_counter() - started)


def rq_enqueue_rate(bench: Bench, seconds: float, per_call: int) -> tuple[float, RedisCost]:
    """RQ's `enqueue` (per_call 1) or `enqueue_many`, in a loop for `seconds`."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = bench.db(DB_RQ)
    client.flushdb()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    data = [Queue.prepare_data(RQ_NOOP)] * per_call

    def call() -> int:
        if per_call == 1:
            queue.enqueue(RQ_NOOP)
            return 1
        return len(queue.enqueue_many(data))

    call()  # warm-up
    client.flushdb()
    enqueued, meter = 0, bench.redis_meter()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        enqueued += call()
    elapsed = time.perf_counter() - started
    cost = meter.cost(enqueued, elapsed)
    stored = client.llen(QUEUE_KEY)
    if stored != enqueued:
        bench.notes.append(f"RQ enqueue x {per_call}: {stored:,} in Redis for {enqueued:,}")
    return enqueued / elapsed, cost
