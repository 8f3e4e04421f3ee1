"""Waiting for jobs to end: 200 clients each waiting for its job with `GET /jobs/{id}?wait=30`
(long-polls), against the same 200 clients polling `GET /jobs/{id}` every 0.5 s (what a client
of an API without long-polls does). No worker runs: the jobs stay queued while Redis's command
count is read over a few seconds, then each is canceled through the API and the time until
its client sees it ended is measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx2

from benchmarks.common import log, percentile
from benchmarks.harness import Bench, Row

CLIENTS = 200
POLL_INTERVAL = 0.5  # seconds between two reads of a polling client
IDLE_SECONDS = 5.0  # how long Redis's command count is read while every client waits
FINAL = {"finished", "failed", "canceled"}


async def _long_poll(client: httpx2.AsyncClient, job_id: str) -> float:
    """Wait for the job with ?wait=30 until it has ended; when the client saw it end."""
    while True:
        answer = (await client.get(f"/jobs/{job_id}", params={"wait": 30})).json()
        if answer["status"] in FINAL:
            return time.monotonic()


async def _poll(client: httpx2.AsyncClient, job_id: str) -> float:
    while True:
        if (await client.get(f"/jobs/{job_id}")).json()["status"] in FINAL:
            return time.monotonic()
        await asyncio.sleep(POLL_INTERVAL)


async def _measure(
    bench: Bench,
    base: str,
    ids: list[str],
    wait: Callable[[httpx2.AsyncClient, str], Coroutine[Any, Any, float]],
) -> tuple[float, list[float]]:
    """(Redis commands/s while the clients wait, each client's delay after its job's end)."""
    stats = bench.db(0)
    limits = httpx2.Limits(max_connections=CLIENTS + 10)
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        waiting = {job_id: asyncio.create_task(wait(client, job_id)) for job_id in ids}
        await asyncio.sleep(1.0)  # every client has sent its first request
        before = int(stats.info("stats")["total_commands_processed"])
        await asyncio.sleep(IDLE_SECONDS)
        after = int(stats.info("stats")["total_commands_processed"])
        canceled = {}
        for job_id in ids:  # one after another, as fast as the API answers
            await client.post(f"/jobs/{job_id}/cancel")
            canceled[job_id] = time.monotonic()
        seen = await asyncio.gather(*waiting.values())
    delays = [at - canceled[job_id] for job_id, at in zip(waiting, seen, strict=True)]
    return (after - before - 2) / IDLE_SECONDS, sorted(delays)


def run(bench: Bench) -> None:
    log(f"== long-poll: {CLIENTS} clients waiting for their jobs, ?wait=30 vs polling")
    api, base = bench.start_api()
    try:
        waits = asyncio.run(_measure(bench, base, bench.publish_noops(CLIENTS), _long_poll))
        polls = asyncio.run(_measure(bench, base, bench.publish_noops(CLIENTS), _poll))
    finally:
        bench.procs.stop(api)
    for name, (rate, delays) in (("long-poll", waits), ("polling", polls)):
        log(
            f"   {name}: {rate:,.0f} Redis commands/s while waiting; seen ended after "
            f"p50 {statistics.median(delays) * 1000:.1f} ms, "
            f"max {delays[-1] * 1000:.1f} ms"
        )
    (wait_rate, wait_delays), (poll_rate, poll_delays) = waits, polls
    every = f"every {POLL_INTERVAL} s"
    bench.rows += [
        Row(
            f"Waiting for a job's end, {CLIENTS} clients at once: Redis commands/s while "
            "nothing ends ↓",
            f"{wait_rate:,.0f} (GET /jobs/{{id}}?wait=30)",
            f"{poll_rate:,.0f} (GET /jobs/{{id}} {every})",
            f"{wait_rate / poll_rate:.2g}x" if poll_rate else "n/a",
        ),
        Row(
            "Waiting for a job's end: delay from its cancel's answer to its client seeing it "
            "ended, p99, ms ↓",
            f"{percentile(wait_delays, 99) * 1000:.1f}",
            f"{percentile(poll_delays, 99) * 1000:.1f} (polling {every})",
            f"{percentile(wait_delays, 99) / max(percentile(poll_delays, 99), 1e-9):.2g}x",
        ),
    ]
