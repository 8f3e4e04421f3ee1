"""Dependencies: a chain of 1,000 jobs, each waiting for the one before, and a fan-in of 1,000
parents into one child, through the API (`POST /jobs/batch`, `depends_on`) and one worker
container at its defaults.

- Chain: one batch of 1,000 `noop` jobs, item i naming `$<i-1>`, sent while the worker runs.
  Only one link can run at a time, so the figure is the cost of a link: the last link's end
  minus the first link's start (the job hashes' `started_at`, `ended_at`), over 999 hand-offs;
  and the wall time from the POST to the last link finished.
- Fan-in: the queue paused (POST /queues/app-queue/pause), 1,000 parents published in one batch
  and the child in one POST /jobs naming all of them, then the queue resumed: the time from
  the first parent's start to the child's end (and from the resume to the child finished), and
  from the last parent's end to the child's start (the hand-off the last parent's ending
  script makes).

Baseline, same run, own database: RQ 3's own `depends_on`, jobs enqueued with `Queue.enqueue`
(the chain: each on the one before; the fan-in: the child on a list of the 1,000 parents),
then one `SimpleWorker.work(burst=True)`, which enqueues each dependent as its parent
finishes; the same figures, read from RQ's job hashes.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import orjson
import redis

from benchmarks.common import (
    DB_RQ,
    DB_SERVICE,
    QUEUE,
    RQ_NOOP,
    baseline_argv,
    fmt_ratio,
    load_average,
    log,
)
from benchmarks.harness import Bench, Row
from service.config import constants

LINKS, LINKS_QUICK = 1000, 200
PARENTS, PARENTS_QUICK = 1000, 200


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, orjson.dumps(body), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def _times(bench: Bench, client: redis.Redis, ids: list[str]) -> list[tuple[float, float]]:
    rows = bench.job_times(client, ids, ("started_at", "ended_at"))
    if any(start is None or end is None for start, end in rows):
        raise RuntimeError("a job has no started_at or ended_at")
    return [(start or 0.0, end or 0.0) for start, end in rows]


def _wait_status(client: redis.Redis, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    key = constants.job_key(job_id)
    while client.hget(key, "status") != b"finished":
        if time.monotonic() > deadline:
            status = client.hget(key, "status")
            raise TimeoutError(f"job {job_id} not finished within {timeout:g}s ({status!r})")
        time.sleep(0.005)


def _chain_ours(bench: Bench, base: str, links: int) -> tuple[float, float]:
    """(seconds per link from the first start to the last end, wall seconds from the POST)."""
    client = bench.db(DB_SERVICE)
    jobs = [{"type": "noop"}] + [
        {"type": "noop", "depends_on": [f"${i - 1}"]} for i in range(1, links)
    ]
    sent = time.perf_counter()
    ids = [job["id"] for job in _post(f"{base}/jobs/batch", {"jobs": jobs})["jobs"]]
    _wait_status(client, ids[-1], timeout=max(60.0, links * 0.1))
    wall = time.perf_counter() - sent
    times = _times(bench, client, ids)
    return (times[-1][1] - times[0][0]) / (links - 1), wall


def _fan_in_ours(bench: Bench, base: str, parents: int) -> tuple[float, float, float]:
    """(seconds from the first parent's start to the child's end, from the resume to the child
    finished, from the last parent's end to the child's start)."""
    client = bench.db(DB_SERVICE)
    _post(f"{base}/queues/{QUEUE}/pause", {})
    batch = _post(f"{base}/jobs/batch", {"jobs": [{"type": "noop"}] * parents})
    parent_ids = [job["id"] for job in batch["jobs"]]
    child = _post(f"{base}/jobs", {"type": "noop", "depends_on": parent_ids})["id"]
    resumed = time.perf_counter()
    _post(f"{base}/queues/{QUEUE}/resume", {})
    _wait_status(client, child, timeout=120.0)
    total = time.perf_counter() - resumed
    times = _times(bench, client, [*parent_ids, child])
    span = times[-1][1] - min(start for start, _ in times)
    return span, total, times[-1][0] - max(end for _, end in times[:-1])


def _rq(bench: Bench, links: int, parents: int) -> tuple[float, float, float, float]:
    """RQ's own depends_on: (chain s per link, chain worker wall s, fan-in s from the worker's
    start to the child finished, last parent's end to the child's start)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = bench.db(DB_RQ)
    client.flushdb()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    chain = [queue.enqueue(RQ_NOOP)]
    for _ in range(links - 1):
        chain.append(queue.enqueue(RQ_NOOP, depends_on=chain[-1]))
    wall = _rq_burst(bench)
    times = _times(bench, client, [job.id for job in chain])
    per_link = (times[-1][1] - times[0][0]) / (links - 1)

    client.flushdb()
    tops = [queue.enqueue(RQ_NOOP) for _ in range(parents)]
    child = queue.enqueue(RQ_NOOP, depends_on=tops)
    fan_wall = _rq_burst(bench)
    times = _times(bench, client, [*(job.id for job in tops), child.id])
    hand_off = times[-1][0] - max(end for _, end in times[:-1])
    fan_in = times[-1][1] - min(start for start, _ in times)
    log(f"   RQ: chain worker ran {wall:.2f} s, fan-in worker {fan_wall:.2f} s (start-up included)")
    return per_link, wall, fan_in, hand_off


def _rq_burst(bench: Bench) -> float:
    worker = bench.procs.start(
        "rq-worker", baseline_argv("rq-worker", bench.url(DB_RQ), "burst"), bench.env()
    )
    started = time.perf_counter()
    code = worker.process.wait(timeout=600)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"RQ worker exited with {code}:\n{worker.tail()}")
    bench.procs.stop(worker)
    return elapsed


def run(bench: Bench) -> None:
    quick = bench.args.quick
    links = LINKS_QUICK if quick else LINKS
    parents = PARENTS_QUICK if quick else PARENTS
    log(
        f"\n== dependencies: a chain of {links:,} and a fan-in of {parents:,} parents, through "
        f"the API and one worker container at its defaults (load average {load_average()})"
    )
    api, base = bench.start_api()
    worker = bench.start_worker()
    try:
        per_link, chain_wall = _chain_ours(bench, base, links)
        fan_in, resumed, hand_off = _fan_in_ours(bench, base, parents)
    finally:
        bench.procs.stop(worker)
        bench.procs.stop(api)
    log(
        f"   service: chain {per_link * 1e3:.2f} ms per link ({chain_wall:.2f} s from the POST "
        f"to the last link finished); fan-in: child finished {fan_in:.2f} s after the first "
        f"parent started ({resumed:.2f} s after the resume), started {hand_off * 1e3:.1f} ms "
        "after the last parent ended (stamps of two processes: within a ms is at once)"
    )
    rq_link, _, rq_fan_in, rq_hand_off = _rq(bench, links, parents)
    log(
        f"   RQ depends_on: chain {rq_link * 1e3:.2f} ms per link; fan-in: child finished "
        f"{rq_fan_in:.2f} s after the first parent started, started {rq_hand_off * 1e3:.1f} ms "
        f"after the last parent ended"
    )
    bench.rows += [
        Row(
            f"Dependencies: chain of {links:,}, per link (start to end / {links - 1}), ms ↓",
            f"{per_link * 1e3:.2f} (total {chain_wall:.2f} s from the POST)",
            f"RQ depends_on: {rq_link * 1e3:.2f}",
            fmt_ratio(per_link, rq_link),
        ),
        Row(
            f"Dependencies: fan-in of {parents:,} parents, first start to child's end, s ↓",
            f"{fan_in:.2f} (child started {hand_off * 1e3:.1f} ms after the last parent)",
            f"RQ depends_on: {rq_fan_in:.2f} ({rq_hand_off * 1e3:.1f} ms)",
            fmt_ratio(fan_in, rq_fan_in),
        ),
    ]
