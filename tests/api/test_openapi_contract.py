"""The API answers as its OpenAPI document says, and only so: schemathesis' `st run` with every
check and every phase (the stateful one too: jobs created, read and canceled through the
document's links, dead letters listed, retried and deleted), against a real API process with
API keys and job history (MongoDB); and a property-based fuzz of each operation from the
same document, which also checks that no refused request enqueues anything.

Both are deterministic (a fixed seed, no example database) and bounded. The rules the document
cannot state are in tests/api/schemathesis_hooks.py, applied to valid cases only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode

from service.api.openapi import build_openapi
from service.dev.embedded_mongo import EmbeddedMongo
from service.dev.embedded_redis import free_port
from service.jobs import registry
from tests.api.schemathesis_hooks import obeying_unstated_rules, waiting_briefly
from tests.conftest import (
    ROOT,
    TEST_HANDLERS,
    TEST_MODULES,
    ServiceProcess,
    base_env,
    enqueued,
    publish,
    wait_for,
)

pytestmark = pytest.mark.slow

KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOOKS = "tests.api.schemathesis_hooks"
DEAD_JOBS = 12  # dead letters for the stateful phase's links to retry and delete
# Per operation and phase, and for the stateful phase; FUZZ_EXAMPLES raises all three for a
# longer search.
ST_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))  # half valid, half invalid
OPERATIONS = [
    (method.upper(), path)
    for path, operations in build_openapi(registry.load(TEST_MODULES), auth=True)["paths"].items()
    for method in operations
]


@dataclass
class Api:
    api: ServiceProcess
    queue_redis: redis.Redis
    schema: BaseSchema
    folder: Path  # its logs, and where `st run` runs (it keeps a cache there)


def _dead_jobs(redis_url: str, queue_redis: redis.Redis, folder: Path) -> None:
    """DEAD_JOBS `fail` jobs, run to their end by a worker that then stops."""
    ids = [publish(redis_url, "fail", {"message": f"boom {n}"}) for n in range(DEAD_JOBS)]
    env = base_env(redis_url, WORKER_MODE="true", PORT=str(free_port()), WORKER_CONCURRENCY="4")
    worker = ServiceProcess(env, log=folder / "worker.log").wait_healthy()
    try:
        wait_for(
            lambda: all(queue_redis.hget(f"rq:job:{i}", "status") == b"failed" for i in ids),
            timeout=20,
        )
    finally:
        worker.stop()


def _start(
    redis_server: str, folder: Path, handlers: str
) -> tuple[ServiceProcess, EmbeddedMongo, BaseSchema]:
    mongo = EmbeddedMongo(path=str(folder / "mongo.sqlite")).start()
    env = base_env(
        redis_server,
        PORT=str(free_port()),
        API_KEYS=KEY,
        MONGODB_URI=mongo.uri,
        HANDLER_MODULES=handlers,
    )
    api = ServiceProcess(env, log=folder / "api.log").wait_healthy()
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": KEY}}}})
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config, headers=AUTH)
    return api, mongo, schema


@pytest.fixture(scope="module")
def contract(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API process with API keys and job history (MongoDB) on, so that every documented
    answer can happen, and dead letters to act on. Its job types are the few built in (and
    one more): each adds its own variant of every job option to the cases schemathesis
    enumerates, and one variant shows what all of them do."""
    folder = tmp_path_factory.mktemp("contract")
    queue_redis = redis.Redis.from_url(f"{redis_server}/1")
    queue_redis.flushall()
    _dead_jobs(redis_server, queue_redis, folder)
    api, mongo, schema = _start(redis_server, folder, "service.dev.demo,tests.lean_handlers")
    yield Api(api, queue_redis, schema, folder)
    queue_redis.close()
    api.stop()
    mongo.stop()


@pytest.fixture(scope="module")
def fuzzed(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """As `contract`, with the test job types: payload schemas of every shape."""
    folder = tmp_path_factory.mktemp("fuzz")
    queue_redis = redis.Redis.from_url(f"{redis_server}/1")
    api, mongo, schema = _start(redis_server, folder, TEST_HANDLERS)
    yield Api(api, queue_redis, schema, folder)
    queue_redis.close()
    api.stop()
    mongo.stop()


def _st_run(contract: Api, phases: str, examples: int, timeout: float) -> None:
    """`st run` with every check over `phases`; the test fails with its report if it does."""
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{contract.api.url}/openapi.json",
        "--checks=all",
        f"--phases={phases}",
        f"--header=Authorization: Bearer {KEY}",
        "--seed=1",
        f"--max-examples={examples}",
        # DELETE /jobs/{job_id} is the older spelling of POST .../cancel: it keeps the job, as
        # the document says, where schemathesis takes a DELETE to remove what it names.
        "--exclude-deprecated",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            command, cwd=contract.folder, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"st run {phases} took over {timeout} s:\n{output[-20_000:]}")
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]


@pytest.mark.timeout(150)
def test_schemathesis_with_every_check_and_the_stateful_phase_finds_nothing(
    contract: Api,
) -> None:
    # The stateful phase first, while the dead letters are there to retry and delete (the
    # other phases delete them all: `DELETE /dead?all=true` is a valid request).
    _st_run(contract, "stateful", STATEFUL_EXAMPLES, timeout=60)
    _st_run(contract, "examples,coverage,fuzzing", ST_EXAMPLES, timeout=80)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzz_every_operation_and_refused_requests_enqueue_nothing(
    fuzzed: Api, method: str, path: str
) -> None:
    """Schemathesis' checks on valid and invalid requests to one operation, deterministically;
    and no error response enqueues anything."""
    operation = fuzzed.schema[path][method]
    valid = operation.as_strategy(GenerationMode.POSITIVE).map(obeying_unstated_rules)
    valid = valid.map(waiting_briefly)
    invalid = operation.as_strategy(GenerationMode.NEGATIVE).map(waiting_briefly)

    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(valid, invalid))
    def fuzz(case: Case) -> None:
        before = enqueued(fuzzed.queue_redis)
        response = case.call_and_validate()
        if response.status_code >= 400:
            assert enqueued(fuzzed.queue_redis) == before, response.status_code

    fuzz()
