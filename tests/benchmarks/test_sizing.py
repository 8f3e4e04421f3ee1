"""The sizing phase's bookkeeping on a real Redis: each step is counted per job, and memory
per job is what the jobs leave in Redis (the figures themselves are measured in benchmarks/)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from benchmarks import sizing
from benchmarks.common import DB_SERVICE
from benchmarks.harness import Bench
from service.dev.embedded_redis import EmbeddedRedis


@pytest.fixture
def bench(redis_url: str, tmp_path: Path) -> Iterator[Bench]:
    server = EmbeddedRedis()
    server.port = int(redis_url.rsplit(":", 1)[1])  # the suite's Redis, not a new one
    bench = Bench(argparse.Namespace(), tmp_path, server=server)
    yield bench
    for client in bench._clients.values():
        client.close()


def test_the_typical_payload_is_about_200_bytes() -> None:
    assert len(orjson.dumps(sizing.payload())) == sizing.PAYLOAD_BYTES


def test_steps_count_each_script_call_per_job(bench: Bench) -> None:
    steps = sizing.measure_steps(bench, 200)

    assert steps.publish_one.calls["evalsha"] == 200  # one call per job
    assert steps.publish_batch.calls["evalsha"] == 200 // sizing.BATCH
    assert steps.claim.calls["evalsha"] == 200 // sizing.BATCH
    assert steps.complete.calls["evalsha"] == 200 // sizing.BATCH
    assert steps.complete.calls["xadd"] == 200  # each job's result
    assert steps.job_us > 0
    assert bench.db(DB_SERVICE).dbsize() == 0  # nothing left behind


def test_memory_per_job_is_what_the_jobs_leave_and_the_stream_node_size_counts(
    bench: Bench,
) -> None:
    default, small = (sizing.measure_memory(bench, 500, size) for size in (4096, 1024))

    assert default.waiting > sizing.PAYLOAD_BYTES  # the hash holds the payload and more
    assert default.kept > default.waiting  # a result stream and a registry entry more
    assert small.kept < default.kept - 1000  # each job's one-entry stream is smaller
    client = bench.db(DB_SERVICE)
    assert client.config_get("stream-node-max-bytes")["stream-node-max-bytes"] == "4096"
    assert client.dbsize() == 0
