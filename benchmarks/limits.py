"""Limits: a rate limit and a concurrency limit held across three worker containers.

Rate: `limits.rated` (rate_limit="20/second", a no-op) published beside `bench.sync_sleep`
(100 ms, unlimited) on the same queue, three containers of one process x 50 slots. Reported:
the most starts (the claims' `started_at`, which the limit governs) in any sliding one-second
window, which must be at most 20; the rated type's sustained rate, n starts over the n / 20
windows they fill (first start to a second after the last: within 5 % of 20/s); and the
unlimited type's throughput beside it, against the same drain without the limited type (at
least 90 %).

Concurrency: `limits.slots` (concurrency_limit=5, sleeps 100 ms) on three containers; the
handlers' running set is sampled every 10 ms (at most 5), one container is SIGKILLed mid-run,
and every job must still finish (its leases come back when the dead container's jobs are
recovered).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from benchmarks.common import DB_APP, DB_SERVICE, Child, load_average, log
from benchmarks.demo_handlers import LIMIT_RUNNING
from benchmarks.harness import Bench
from service.config import constants

RATE, SLOTS = 20, 5
CONTAINERS, CONCURRENCY = 3, 50


def _containers(bench: Bench) -> list[Child]:
    return [bench.start_worker(1, CONCURRENCY) for _ in range(CONTAINERS)]


def _free_rate(bench: Bench, ids: list[str]) -> float:
    return len(ids) / bench.drain_span(bench.db(DB_SERVICE), ids)


def _most_in_a_window(starts: list[float], seconds: float = 1.0) -> int:
    starts = sorted(starts)
    most, first = 0, 0
    for last, moment in enumerate(starts):
        while moment - starts[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def _rate_phase(bench: Bench, quick: bool) -> None:
    client = bench.db(DB_SERVICE)
    client.flushdb()
    seconds = 3 if quick else 10
    free_jobs = 1000 if quick else 3000
    workers = _containers(bench)
    alone = bench.publish_noops(free_jobs, "bench.sync_sleep")
    bench.wait_finished(client, free_jobs, timeout=120)
    alone_rate = _free_rate(bench, alone)
    rated = bench.publish_noops(RATE * seconds, "limits.rated")
    beside = bench.publish_noops(free_jobs, "bench.sync_sleep")
    bench.wait_finished(client, 2 * free_jobs + len(rated), timeout=seconds * 5 + 60)
    beside_rate = _free_rate(bench, beside)
    # The limiter's own instants (Redis's clock, at the claim), and the claims' started_at (the
    # worker's clock, read before its CLAIM call reached Redis: later by a loaded event loop)
    with client.pipeline(transaction=False) as pipe:
        for job_id in rated:
            pipe.hget(constants.job_key(job_id), "limit_started")
        starts = sorted(float(value) for value in pipe.execute())
    claimed = [t[0] or 0.0 for t in bench.job_times(client, rated, ("started_at",))]
    # A sliding window lets N start at once, then N per period: n starts fill n / N periods,
    # the last one's ending a period after the last start.
    total = len(starts) / (starts[-1] - starts[0] + 1.0)
    most = _most_in_a_window(starts)
    for worker in workers:
        bench.procs.stop(worker)
    log(
        f"   rate_limit={RATE}/second, {CONTAINERS} containers x {CONCURRENCY} slots, "
        f"{len(rated)} jobs: most starts in any 1 s window {most} (limit {RATE}: "
        f"{'met' if most <= RATE else 'MISSED'}; by the claims' started_at, worker clocks: "
        f"{_most_in_a_window(claimed)}); sustained {total:.2f}/s "
        f"({(total / RATE - 1) * 100:+.1f} % of {RATE}/s)"
    )
    log(
        f"   unlimited bench.sync_sleep on the same queue: {alone_rate:,.0f} jobs/s alone, "
        f"{beside_rate:,.0f} jobs/s beside the limited type ({beside_rate / alone_rate:.0%})"
    )


def _sample(bench: Bench, stop: threading.Event, seen: list[int]) -> None:
    app = bench.db(DB_APP)
    while not stop.is_set():
        seen.append(int(app.scard(LIMIT_RUNNING)))
        time.sleep(0.01)


def _concurrency_phase(bench: Bench, quick: bool) -> None:
    client, app = bench.db(DB_SERVICE), bench.db(DB_APP)
    client.flushdb()
    app.delete(LIMIT_RUNNING)
    jobs = 60 if quick else 200  # at 5 at once x 100 ms: 1.2 s (4 s)
    workers = _containers(bench)
    bench.publish_noops(jobs, "limits.slots")
    seen: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(bench, stop, seen), daemon=True)
    sampler.start()
    # Mid-run, one container is SIGKILLed, supervisor and all
    time.sleep(jobs * 0.1 / SLOTS / 2)
    victim = workers[0]
    os.killpg(victim.pid, signal.SIGKILL)
    # Its runs died with it: no longer running (the set is the handlers' own bookkeeping)
    for member in app.smembers(LIMIT_RUNNING):
        job_id = member.decode() if isinstance(member, bytes) else str(member)
        runner = client.hget(constants.job_key(job_id), "worker_name") or b""
        if f".{victim.pid}.".encode() in runner:
            app.srem(LIMIT_RUNNING, job_id)
    finished, failed = bench.wait_finished(client, jobs, timeout=120)
    stop.set()
    sampler.join()
    for worker in workers[1:]:
        bench.procs.stop(worker)
    log(
        f"   concurrency_limit={SLOTS}, {CONTAINERS} containers x {CONCURRENCY} slots, {jobs} "
        f"jobs of 100 ms, one container SIGKILLed mid-run: most running at once {max(seen)} "
        f"over {len(seen)} samples every 10 ms (limit {SLOTS}: "
        f"{'met' if max(seen) <= SLOTS else 'MISSED'}); {finished} finished, {failed} failed, "
        f"{jobs - finished - failed} lost"
    )


def run(bench: Bench) -> None:
    log(f"limits (load average {load_average()})")
    _rate_phase(bench, bench.args.quick)
    _concurrency_phase(bench, bench.args.quick)
