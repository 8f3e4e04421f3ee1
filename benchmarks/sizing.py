"""Sizing Redis: what one job costs redis-server, step by step, and what it keeps in memory.

Three measurements, all on the private redis-server, read from `INFO cpu` (used_cpu_sys +
used_cpu_user) and `INFO commandstats` before and after (benchmarks/redis_meter.py):

1. The steps, driven from this process with the service's own scripts so nothing else runs:
   publish (one job per call, as a lone POST /jobs; and 50 per call, as POST /jobs/batch or
   the API's coalesced singles under load), claim (WORKER_BATCH_SIZE=50 per call), complete
   (50 outcomes per call, the recorder's largest batch), and the job history's share: the
   same three steps with history on (each script appends its event to the stream) less
   without, plus the shipper's XRANGE and XDEL of those events.
2. Memory: `used_memory` before and after N waiting jobs with a typical payload (~200 B of
   JSON), then after they have run and their results (~100 B) are kept for `result_ttl`.
3. The drain rate with 1, 2 and 4 worker containers (one process x 5 slots each, no-op
   jobs), and Redis's CPU per job and share of a core in each. On a 2-core machine the
   containers take the CPU Redis would need, so Redis never saturates a core here: its
   capacity is extrapolated from its CPU per job (1 s / CPU per job = jobs/s per core).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
import redis

from benchmarks.common import DB_SERVICE, QUEUE, cpu_seconds, fmt_rate, log, worker_pids
from benchmarks.drain import preload_parked, release
from benchmarks.harness import Bench, Row
from benchmarks.redis_meter import RedisCost
from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.jobs import records
from service.jobs.states import Ending
from service.store.claim import Claimed, ClaimSync
from service.store.complete import CompleteSync, Completion
from service.store.publish import publish_now

BATCH = 50  # jobs per PUBLISH, CLAIM and COMPLETE call (WORKER_BATCH_SIZE's default)
CONTAINERS = (1, 2, 4)
HISTORY_ROUNDS = 3  # pairs of runs, history off and on
SHIP_BATCH = 500  # history events per XRANGE, as the shipper reads them
PAYLOAD_BYTES = 200
RESULT_BYTES = 100
# stream-node-max-bytes: Redis's default, then a smaller node. Redis 7.0 allocates a stream's
# first node at this size, and every kept job has a results stream of one entry.
NODE_BYTES = (4096, 1024)


@dataclass
class Steps:
    publish_one: RedisCost
    publish_batch: RedisCost
    claim: RedisCost
    complete: RedisCost
    history: float  # µs per job: the three steps with history on, less without, plus shipping

    @property
    def job_us(self) -> float:
        """Redis CPU per job, published in batches, claimed and completed, no history."""
        parts = (self.publish_batch, self.claim, self.complete)
        return sum(p.cpu_us_per_job for p in parts)


@dataclass
class Memory:
    node_bytes: int  # Redis's stream-node-max-bytes: each job's results stream is one node
    waiting: float  # used_memory per waiting job
    kept: float  # used_memory per finished job kept with its result


@dataclass
class Drain:
    containers: int
    rate: float  # jobs/s, release to all finished
    redis: RedisCost
    workers_cpu: float  # seconds, all worker processes


def payload() -> dict[str, str]:
    """A typical job payload: ~200 bytes of JSON."""
    body = {"to": "someone@example.com", "template": "order-shipped", "order": "ORD-0012345"}
    body["note"] = "x" * (PAYLOAD_BYTES - len(orjson.dumps({**body, "note": ""})))
    return body


def run(bench: Bench) -> None:
    n = bench.args.jobs
    log(f"\n== sizing: Redis CPU and memory per job ({n:,} jobs per step)")
    steps = measure_steps(bench, n)
    memory = [measure_memory(bench, n, node_bytes) for node_bytes in NODE_BYTES]
    drains = [measure_drain(bench, n, k) for k in CONTAINERS]
    lines = table(steps, memory, drains, n)
    log("\n".join("   " + line for line in lines))
    bench.sections += lines
    for name, cost in (
        ("publish, 1 per call", steps.publish_one),
        ("publish, 50 per call", steps.publish_batch),
        ("claim, 50 per call", steps.claim),
        ("complete, 50 per call", steps.complete),
    ):
        bench.costs[f"sizing: {name}"] = cost
    for drain in drains:
        bench.costs[f"sizing: drain, {drain.containers} container(s)"] = drain.redis
    bench.rows.append(
        Row(
            "Sizing: jobs/s one Redis core carries (publish 50 per call + claim + complete) ↑",
            fmt_rate(1e6 / steps.job_us, "jobs/s"),
            "",
            "",
        )
    )


def _timed(bench: Bench, jobs: int, step: Callable[[], object]) -> RedisCost:
    meter, started = bench.redis_meter(), time.perf_counter()
    step()
    return meter.cost(jobs, time.perf_counter() - started)


def _publish(client: redis.Redis, jobs: Sequence[records.NewJob], per_call: int) -> None:
    for start in range(0, len(jobs), per_call):
        publish_now(client, jobs[start : start + per_call])


def _claim_all(client: redis.Redis, n: int) -> list[Claimed]:
    claim, claimed = ClaimSync(client, "sizing-worker", [QUEUE]), list[Claimed]()
    while len(claimed) < n:
        batch = claim(BATCH, score=time.time() + 600, execution=f"s{len(claimed)}")
        if not batch:
            raise RuntimeError(f"claimed {len(claimed)} of {n} jobs")
        claimed += batch
    return claimed


def _complete_all(client: redis.Redis, claimed: Sequence[Claimed]) -> None:
    complete, now = CompleteSync(client, DEFAULT_RETENTION, 3), time.time()
    result = records.encode_return_value(orjson.dumps("r" * (RESULT_BYTES - 2)))
    for start in range(0, len(claimed), BATCH):
        batch = claimed[start : start + BATCH]
        done = [Completion(Ending.OK, c.id, c.queue, c.member, result, now, now) for c in batch]
        complete("sizing-worker", done, now)


def _ship_all(client: redis.Redis) -> None:
    """What the history shipper asks of Redis: read a batch of events, delete them."""
    while entries := client.xrange(constants.HISTORY_STREAM, count=SHIP_BATCH):
        client.xdel(constants.HISTORY_STREAM, *[cast(bytes, entry_id) for entry_id, _ in entries])


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure_steps(bench: Bench, n: int) -> Steps:
    client = bench.db(DB_SERVICE)
    _run_all(client, 1)  # the scripts loaded (SCRIPT LOAD on NOSCRIPT) before any reading
    client.flushdb()
    single = _timed(bench, n, lambda: _publish(client, _jobs(n), 1))
    client.flushdb()
    batch = _timed(bench, n, lambda: _publish(client, _jobs(n), BATCH))
    claimed: list[Claimed] = []
    claim = _timed(bench, n, lambda: claimed.extend(_claim_all(client, n)))
    complete = _timed(bench, n, lambda: _complete_all(client, claimed))
    client.flushdb()
    return Steps(single, batch, claim, complete, _history_us(bench, client, n))


def _history_us(bench: Bench, client: redis.Redis, n: int) -> float:
    """Redis CPU per job of its history events: the three steps with history on less the
    same without (the median of HISTORY_ROUNDS pairs: a difference of two runs on a shared
    machine is noisy), plus the shipper's reads and deletes."""
    differences, shipping = [], 0.0
    for _ in range(HISTORY_ROUNDS):
        costs = []
        for history_on in (False, True):
            client.flushdb()
            if history_on:
                client.set(constants.HISTORY_ON_KEY, 1, ex=600)
            costs.append(_timed(bench, n, lambda: _run_all(client, n)).cpu)
        differences.append(costs[1] - costs[0])
        shipping = _timed(bench, n, lambda: _ship_all(client)).cpu
    client.flushdb()
    return (statistics.median(differences) + shipping) / n * 1e6


def _jobs(n: int) -> list[records.NewJob]:
    body = payload()
    return [records.NewJob(records.new_id(), "noop", QUEUE, body, 180, 0) for _ in range(n)]


def measure_memory(bench: Bench, n: int, node_bytes: int) -> Memory:
    """used_memory per waiting job, then per finished job kept with its result."""
    client = bench.db(DB_SERVICE)
    saved = str(client.config_get("stream-node-max-bytes")["stream-node-max-bytes"])
    client.config_set("stream-node-max-bytes", node_bytes)
    try:
        client.flushdb()
        empty = _used_memory(client)
        _publish(client, _jobs(n), BATCH)
        waiting = _used_memory(client)
        _complete_all(client, _claim_all(client, n))
        kept = _used_memory(client)
        client.flushdb()
    finally:
        client.config_set("stream-node-max-bytes", saved)
    return Memory(node_bytes, (waiting - empty) / n, (kept - empty) / n)


def _run_all(client: redis.Redis, n: int) -> None:
    """Publish n jobs in batches, claim them and complete them."""
    _publish(client, _jobs(n), BATCH)
    _complete_all(client, _claim_all(client, n))


def measure_drain(bench: Bench, n: int, containers: int) -> Drain:
    client = bench.db(DB_SERVICE)
    preload_parked(bench, n)
    workers = [bench.start_worker(1, 5) for _ in range(containers)]
    pids = [pid for worker in workers for pid in worker_pids(worker.pid)]
    workers_cpu, meter = sum(map(cpu_seconds, pids)), bench.redis_meter()
    started = time.perf_counter()
    release(bench, len(pids))
    bench.wait_finished(client, n, timeout=max(60.0, n / 100))
    elapsed = time.perf_counter() - started
    cost = meter.cost(n, elapsed)
    workers_cpu = sum(map(cpu_seconds, pids)) - workers_cpu
    for worker in workers:
        bench.procs.stop(worker)
    log(
        f"   {containers} container(s): {n / elapsed:,.0f} jobs/s; {cost.describe()}; "
        f"workers {workers_cpu / n * 1e6:.0f} µs per job"
    )
    client.flushdb()
    return Drain(containers, n / elapsed, cost, workers_cpu)


def table(steps: Steps, memory: Sequence[Memory], drains: Sequence[Drain], n: int) -> list[str]:
    def step(label: str, cost: RedisCost) -> str:
        return (
            f"| {label} | {cost.cpu_us_per_job:.1f} | {cost.commands_per_job:.1f} | "
            f"{cost.jobs_per_core:,.0f} |"
        )

    lines = [
        f"Sizing Redis ({n:,} jobs per step; payload {PAYLOAD_BYTES} B, result "
        f"{RESULT_BYTES} B of JSON):",
        "",
        "| step | Redis CPU per job, µs | commands per job | jobs/s one Redis core carries |",
        "|---|---|---|---|",
        step("publish, 1 job per call (a lone `POST /jobs`)", steps.publish_one),
        step(f"publish, {BATCH} per call (batch, or singles coalesced)", steps.publish_batch),
        step(f"claim, {BATCH} per call", steps.claim),
        step(f"complete, {BATCH} per call", steps.complete),
        f"| history: 3 events per job, appended and shipped | {steps.history:.1f} | | |",
        f"| **a job** (publish in batches + claim + complete) | {steps.job_us:.1f} | | "
        f"**{1e6 / steps.job_us:,.0f}** |",
        f"| a job with history | {steps.job_us + steps.history:.1f} | | "
        f"{1e6 / (steps.job_us + steps.history):,.0f} |",
        f"| a job published alone, with history | "
        f"{_lone(steps):.1f} | | {1e6 / _lone(steps):,.0f} |",
        "",
        "| Redis `stream-node-max-bytes` | memory per waiting job | per finished job kept "
        "with its result |",
        "|---|---|---|",
        *(
            f"| {m.node_bytes}{' (default)' if m.node_bytes == 4096 else ''} | "
            f"{m.waiting:,.0f} B | {m.kept:,.0f} B |"
            for m in memory
        ),
        "",
        "| worker containers (1 process x 5 each) | drain, jobs/s | Redis CPU per job, µs | "
        "Redis busy, share of a core | jobs/s per Redis core at that cost |",
        "|---|---|---|---|---|",
        *(
            f"| {d.containers} | {d.rate:,.0f} | {d.redis.cpu_us_per_job:.1f} | "
            f"{d.redis.cpu / d.redis.seconds:.0%} | {d.redis.jobs_per_core:,.0f} |"
            for d in drains
        ),
        "",
        "The drains include the workers' other traffic (heartbeats, wake-up tokens, "
        "housekeeping). On a 2-core machine the containers compete with Redis for CPU, so "
        "Redis never saturates a core here; its capacity is extrapolated from its CPU per job.",
        "",
    ]
    return lines


def _lone(steps: Steps) -> float:
    return (
        steps.publish_one.cpu_us_per_job
        + steps.claim.cpu_us_per_job
        + steps.complete.cpu_us_per_job
        + steps.history
    )
