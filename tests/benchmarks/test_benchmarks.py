"""The benchmark's own arithmetic and bookkeeping (the measurements run in benchmarks/, not here).

Given what Redis reports, or what a peer's task records, the per-job figures are right.
"""

from __future__ import annotations

import argparse
from collections import Counter
from ctypes import c_double
from multiprocessing.sharedctypes import RawArray
from pathlib import Path

import redis

from benchmarks.harness import Bench
from benchmarks.loadgen import Load, combined
from benchmarks.peers import driver, phase
from benchmarks.redis_meter import RedisCost, RedisMeter


def test_redis_cost_is_per_job_and_names_where_the_time_went() -> None:
    cost = RedisCost(
        jobs=1000,
        seconds=2.0,
        cpu=0.05,
        calls=Counter({"evalsha": 20, "hset": 2000, "xadd": 1000}),
        usec=Counter({"evalsha": 30000, "hset": 4000, "xadd": 6000}),
    )

    assert cost.cpu_us_per_job == 50.0
    assert cost.commands_per_job == 3.02
    assert cost.jobs_per_core == 20000.0
    assert cost.top_commands(2) == "evalsha 0.02x 30.0 µs, xadd 1.00x 6.0 µs"


def test_redis_meter_counts_the_commands_between_its_readings(redis_url: str) -> None:
    client = redis.Redis.from_url(f"{redis_url}/0")
    meter = RedisMeter(client)

    for i in range(30):
        client.set(f"k{i}", i)
    cost = meter.cost(jobs=10, seconds=1.0)
    client.close()

    assert cost.calls["set"] == 30
    assert "info" not in cost.calls  # the meter's own INFO calls are not the jobs'
    assert cost.commands_per_job == 3.0
    assert cost.cpu >= 0.0


def test_a_peer_task_records_first_start_last_end_count_and_latency() -> None:
    slots = RawArray(c_double, driver.SLOT_SIZE)
    driver._slot = driver._SlotView(slots, 0)
    driver._latency = RawArray(c_double, 4)

    driver.record()  # a drain job
    driver.record(2, sent=1.0)  # a latency job, sent at t=1 s (epoch)

    assert slots[driver.COUNT] == 2
    assert 0 < slots[driver.FIRST] <= slots[driver.LAST]
    assert driver._latency[2] > 1e9  # started "now", long after t=1 s
    assert driver._latency[0] == 0.0


def test_a_peer_sleep_task_records_the_earliest_start_and_the_latest_end() -> None:
    slots = RawArray(c_double, driver.SLOT_SIZE)
    driver._slot = driver._SlotView(slots, 0)

    driver.record_span(started=100.0)
    driver.record_span(started=50.0)  # began earlier, ended later: jobs overlap
    last = slots[driver.LAST]
    driver.record_span(started=200.0)

    assert slots[driver.COUNT] == 3
    assert slots[driver.FIRST] == 50.0
    assert slots[driver.LAST] >= last > 1e9


def test_side_by_side_puts_each_system_against_rq_and_keeps_failures(tmp_path: Path) -> None:
    bench = Bench(argparse.Namespace(rate=200.0), tmp_path)
    bench.system("RQ SimpleWorker").drain = 100.0
    bench.system("RQ SimpleWorker").drain_jobs = 2000
    fast = bench.system("service, 5 processes (defaults)")
    fast.drain, fast.drain_jobs, fast.p50_ms, fast.p99_ms = 10000.0, 20000, 1.5, 3.25
    bench.system("BullMQ (Node), concurrency 1").note = "install failed: npm is not on PATH"

    table = "\n".join(phase.side_by_side(bench))

    assert "| service, 5 processes (defaults) | 10,000 (20,000) | 100x |" in table
    assert "1.50 / 3.25" in table
    assert "| BullMQ (Node), concurrency 1 | — |" in table
    assert "install failed: npm is not on PATH" in table


def test_loads_run_at_once_on_two_processes_combine_into_one() -> None:
    def load(responses: int, seconds: float, p99: float, errors: str = "none") -> Load:
        return Load("wrk", seconds, responses, 1, errors, 1.0, p99, {202: responses - 1, 503: 1})

    both = combined([load(1000, 10.0, 5.0), load(3000, 10.5, 9.0, "read 2")])
    assert (both.responses, both.non_2xx, both.ok) == (4000, 2, 3998)
    assert both.seconds == 10.5  # the longer run: a rate never overstated
    assert both.ok_per_second == 3998 / 10.5
    assert (both.p50_ms, both.p99_ms, both.socket_errors) == (1.0, 9.0, "read 2")
    assert both.statuses == {202: 3998, 503: 2}


def test_the_limits_phase_counts_the_most_starts_in_any_sliding_second() -> None:
    from benchmarks.limits import _most_in_a_window

    assert _most_in_a_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3  # (0, 0.5, 0.99); 1.0 is out
    assert _most_in_a_window([3.0, 1.0, 2.0]) == 1
