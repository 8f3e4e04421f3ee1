"""The worker supervisor as a real process: outcomes, retries, timeouts, crashes, shutdown;
then the supervisor alone, over stand-in worker processes: replacing, retiring, stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from service.config import constants
from service.dev.embedded_redis import free_port
from tests.conftest import ROOT, ServiceProcess, base_env, http, publish, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]


@pytest.fixture
def app_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{redis_url}/0")


def status_of(queue_redis: redis.Redis, job_id: str) -> str | None:
    value = queue_redis.hget(constants.job_key(job_id), "status")
    return value.decode() if value else None


def wait_status(queue_redis: redis.Redis, job_id: str, status: str, timeout: float = 10) -> None:
    wait_for(lambda: status_of(queue_redis, job_id) == status, timeout)


def fetch(queue_redis: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=queue_redis, serializer=JSONSerializer)


def worker_pid_of(queue_redis: redis.Redis, job_id: str) -> int:
    name = queue_redis.hget(constants.job_key(job_id), "worker_name")
    assert name
    key = constants.worker_key(name.decode())
    # The registration is written by the worker's heartbeat thread, which a loaded machine
    # may run after the first job finished.
    return int(wait_for(lambda: queue_redis.hget(key, "pid")))


def test_results_and_failures_are_readable_with_rqs_own_tools(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_PROCESSES="2")
    ok = publish(redis_url, "echo", {"hello": "world"})
    bad = publish(redis_url, "fail", {"message": "boom"})
    wait_status(queue_redis, ok, "finished")
    wait_status(queue_redis, bad, "failed")

    job = fetch(queue_redis, ok)
    assert job.return_value() == {"hello": "world"}
    assert ok in FinishedJobRegistry("app-queue", connection=queue_redis).get_job_ids()
    failed = fetch(queue_redis, bad)
    assert failed.latest_result().exc_string.strip().endswith("JobFailed: boom")
    assert bad in FailedJobRegistry("app-queue", connection=queue_redis).get_job_ids()

    # Both processes registered (the first may have run both jobs before the second did)
    wait_for(lambda: queue_redis.scard(constants.WORKERS_KEY) == 2)
    rq_cli = Path(sys.executable).parent / "rq"
    info = subprocess.run(
        [rq_cli, "info", "-u", f"{redis_url}/1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "app-queue" in info and "1 finished, 1 failed" in info
    assert "2 workers" in info


def test_a_failing_job_is_retried_then_succeeds(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1")
    job_id = publish(redis_url, "test.flaky", {"fail_times": 2}, max_retries=2)
    wait_status(queue_redis, job_id, "finished")
    assert app_redis.lrange(f"runs:{job_id}", 0, -1) == [b"1", b"2", b"3"]
    entries = queue_redis.xrange(constants.result_key(job_id))
    assert [e[1][b"type"] for e in entries] == [b"4", b"4", b"1"]  # retried, retried, successful
    assert fetch(queue_redis, job_id).return_value() == 3


def test_a_job_out_of_retries_fails(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1")
    job_id = publish(redis_url, "test.flaky", {"fail_times": 9}, max_retries=2)
    wait_status(queue_redis, job_id, "failed")
    assert app_redis.llen(f"runs:{job_id}") == 3
    assert queue_redis.hget(constants.job_key(job_id), "attempts") == b"3"


@pytest.mark.parametrize("job_type", ["test.slow", "test.swallow"])
def test_a_job_past_its_timeout_is_stopped_and_failed(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, job_type: str
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1")
    job_id = publish(redis_url, job_type, {"key": "x"}, timeout=1)
    wait_status(queue_redis, job_id, "failed", timeout=10)
    assert "JobTimeout" in fetch(queue_redis, job_id).latest_result().exc_string


def test_unknown_type_fails_at_once_without_retry(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1")
    ghost = publish(redis_url, "ghost.type", {}, max_retries=5)
    bad_payload = publish(redis_url, "sleep", {"seconds": "soon"}, max_retries=3)
    wait_status(queue_redis, ghost, "failed")
    wait_status(queue_redis, bad_payload, "failed")
    assert queue_redis.hget(constants.job_key(ghost), "attempts") == b"1"
    assert "UnknownJobType" in fetch(queue_redis, ghost).latest_result().exc_string
    error = fetch(queue_redis, bad_payload).latest_result().exc_string
    assert error.startswith("PayloadInvalid: 1 payload error(s): seconds: Input should be")
    assert queue_redis.hget(constants.job_key(bad_payload), "attempts") == b"1"


# Each costs a worker process memory it does not need for jobs without a payload model
# (pydantic about 8 MiB); the API and the supervisor import them, never a worker process.
NOT_IN_WORKERS = {"pydantic", "pydantic_core", "environs", "marshmallow", "dotenv", "pymongo"}
NOT_IN_WORKERS |= {"starlette", "uvicorn", "service.api", "service.worker.supervisor"}


def test_a_worker_process_imports_pydantic_only_for_a_job_with_a_payload_model(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    start_service(
        worker=True, WORKER_CONCURRENCY="1", HANDLER_MODULES="service.dev.demo,tests.lean_handlers"
    )
    jobs = [
        publish(redis_url, "noop"),
        publish(redis_url, "test.modules"),
        publish(redis_url, "echo", {"a": 1}),  # its payload model is pydantic
        publish(redis_url, "test.modules"),
    ]
    for job_id in jobs:
        wait_status(queue_redis, job_id, "finished")
    before, after = (set(fetch(queue_redis, jobs[i]).return_value()) for i in (1, 3))
    assert "service.worker.process" in before
    assert before & NOT_IN_WORKERS == set()
    assert {"pydantic", "service.dev.demo_payloads"} <= after


def test_killed_worker_process_job_runs_again_and_the_process_is_replaced(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    worker = start_service(worker=True, WORKER_PROCESSES="2", WORKER_PROCESSING_INTERVAL="1000")
    job_id = publish(redis_url, "test.block", {"key": "release"}, max_retries=1)
    wait_for(lambda: app_redis.llen("started") == 1)
    os.kill(worker_pid_of(queue_redis, job_id), signal.SIGKILL)

    wait_for(lambda: app_redis.llen("started") == 2, timeout=10)  # re-run within seconds
    app_redis.set("release", 1)
    wait_status(queue_redis, job_id, "finished")
    assert queue_redis.hget(constants.job_key(job_id), "attempts") == b"2"
    wait_for(lambda: http("GET", f"{worker.url}/health")[2]["alive"] == 2)


def test_a_job_that_kills_its_worker_every_time_stops_after_max_crashes(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    start_service(worker=True, WORKER_CONCURRENCY="1", MAX_CRASHES="2")
    job_id = publish(redis_url, "test.crash", {"key": "crashes"}, max_retries=10)
    wait_status(queue_redis, job_id, "failed", timeout=30)
    assert app_redis.get("crashes") == b"2"
    assert queue_redis.hget(constants.job_key(job_id), "retries_left") == b"0"
    assert "WorkerLost" in fetch(queue_redis, job_id).latest_result().exc_string


def test_isolated_job_runs_in_a_child_and_its_crash_spares_the_worker(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1")
    pid_job = publish(redis_url, "test.pid_isolated", {"key": "k"})
    wait_status(queue_redis, pid_job, "finished")
    worker_pid = worker_pid_of(queue_redis, pid_job)
    assert fetch(queue_redis, pid_job).return_value() not in (worker_pid, worker.process.pid)

    crash = publish(redis_url, "test.crash_isolated", {"key": "n"})
    wait_status(queue_redis, crash, "failed")
    assert (
        "job process died (signal SIGKILL)" in fetch(queue_redis, crash).latest_result().exc_string
    )
    echo = publish(redis_url, "echo", {"after": True})
    wait_status(queue_redis, echo, "finished")
    assert worker_pid_of(queue_redis, echo) == worker_pid  # the same process: it never died


def test_housekeeping_recovers_jobs_of_a_worker_that_vanished(
    start_service: Start, redis_url: str, queue_redis: redis.Redis
) -> None:
    # Given a job left `started` by a worker whose whole container died (heartbeat expired)
    job_id = publish(redis_url, "echo", {"n": 1}, max_retries=1)
    queue_redis.lpop(constants.queue_key("app-queue"))
    queue_redis.hset(
        constants.job_key(job_id),
        mapping={"status": "started", "worker_name": "gone", "attempts": 1},
    )
    queue_redis.zadd(
        constants.registry_key("started", "app-queue"), {f"{job_id}:x1": int(time.time()) - 1}
    )
    # When a worker container runs its housekeeping
    start_service(worker=True, WORKER_CONCURRENCY="1", WORKER_PROCESSING_INTERVAL="1000")
    # Then the job is re-queued and runs
    wait_status(queue_redis, job_id, "finished")
    assert fetch(queue_redis, job_id).return_value() == {"n": 1}


def test_idle_worker_stops_on_sigterm_within_2_seconds(start_service: Start) -> None:
    worker = start_service(worker=True, WORKER_PROCESSES="3")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - started < 2
    assert "worker stopped" in worker.output


def test_busy_worker_finishes_its_job_takes_no_new_one_and_exits_0(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", SHUTDOWN_TIMEOUT="30")
    running = publish(redis_url, "test.block", {"key": "release"})
    wait_for(lambda: app_redis.llen("started") == 1)
    waiting = publish(redis_url, "echo", {})
    worker.signal(signal.SIGTERM)
    wait_for(lambda: http("GET", f"{worker.url}/health")[0] == 503)  # stopping: not healthy
    app_redis.set("release", 1)
    assert worker.wait(15) == 0
    assert status_of(queue_redis, running) == "finished"
    assert status_of(queue_redis, waiting) == "queued"
    assert queue_redis.lrange(constants.queue_key("app-queue"), 0, -1) == [waiting.encode()]
    assert queue_redis.smembers(constants.queue_workers_key("app-queue")) == set()


def test_job_past_shutdown_timeout_is_put_back_as_interrupted(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", SHUTDOWN_TIMEOUT="1")
    job_id = publish(redis_url, "test.block", {"key": "never"})
    wait_for(lambda: app_redis.llen("started") == 1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert status_of(queue_redis, job_id) == "queued"
    assert queue_redis.hget(constants.job_key(job_id), "attempts") == b"0"  # not counted
    assert queue_redis.lrange(constants.queue_key("app-queue"), 0, -1) == [job_id.encode()]
    assert queue_redis.zcard(constants.registry_key("started", "app-queue")) == 0
    assert "1 interrupted" in worker.output
    ((_, entry),) = queue_redis.xrange(constants.result_key(job_id))
    assert (entry[b"type"], entry[b"reason"]) == (b"3", b"interrupted")  # recorded, not a failure


@pytest.mark.parametrize(
    "signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)]
)
def test_second_signal_forces_the_stop(
    signals: tuple[int, int],
    start_service: Start,
    redis_url: str,
    queue_redis: redis.Redis,
    app_redis: redis.Redis,
) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", SHUTDOWN_TIMEOUT="60")
    job_id = publish(redis_url, "test.block", {"key": "never"})
    wait_for(lambda: app_redis.llen("started") == 1)
    worker.signal(signals[0])
    wait_for(lambda: http("GET", f"{worker.url}/health")[0] == 503)
    worker.signal(signals[1])
    assert worker.wait(10) == constants.EXIT_FORCED
    assert status_of(queue_redis, job_id) == "queued"


def test_worker_started_before_redis_waits_unready_then_consumes(
    start_service: Start, tmp_path: Path
) -> None:
    from service.dev.embedded_redis import EmbeddedRedis, free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    worker = start_service(
        worker=True, WORKER_CONCURRENCY="1", QUEUE_REDIS_URL=f"{url}/1", REDIS_URL=f"{url}/0"
    )
    assert http("GET", f"{worker.url}/ready")[0] == 503
    assert http("GET", f"{worker.url}/health")[0] == 200  # alive: no crash loop
    server = EmbeddedRedis()
    server.port = port
    server.start()
    try:
        wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200, timeout=15)
        client = redis.Redis.from_url(f"{url}/1")
        job_id = publish(url, "noop")
        wait_status(client, job_id, "finished")
        client.close()
    finally:
        worker.stop()
        server.stop()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batch_size_and_queue_name_shape_what_a_process_claims(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, batch_size: int
) -> None:
    # Given 40 quick jobs waiting on a custom queue
    ids = [publish(redis_url, "noop", queue="custom") for _ in range(40)]
    # When one worker process with WORKER_BATCH_SIZE drains it
    start_service(
        worker=True, WORKER_CONCURRENCY="1", WORKER_BATCH_SIZE=str(batch_size), QUEUE_NAME="custom"
    )
    wait_for(lambda: all(status_of(queue_redis, i) == "finished" for i in ids))
    # Then each claim held at most WORKER_BATCH_SIZE jobs (the execution id ends in x<index>)
    executions = [queue_redis.xrange(constants.result_key(i))[0][1][b"execution_id"] for i in ids]
    positions = {int(e.rsplit(b"x", 1)[1]) for e in executions}
    assert max(positions) == batch_size


def test_a_killed_process_blames_only_the_job_it_was_running(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given one process with one slot, whose claims grew (warm-up jobs are quick), running a
    # blocking job with quick jobs claimed ahead behind it
    warm_up = [publish(redis_url, "noop") for _ in range(60)]
    blocking = publish(redis_url, "test.block", {"key": "release"})
    behind = [publish(redis_url, "echo", {"n": n}) for n in range(10)]
    start_service(worker=True, WORKER_CONCURRENCY="1")
    wait_for(lambda: app_redis.llen("started") == 1)
    # Then the jobs claimed ahead go back to the queue (none waits behind a long job)
    wait_for(lambda: all(status_of(queue_redis, i) == "queued" for i in behind), 2)
    # When the process dies mid-job
    os.kill(worker_pid_of(queue_redis, blocking), signal.SIGKILL)
    app_redis.set("release", 1)
    # Then every job finishes; only the running one counts a crash and a second attempt
    wait_for(lambda: all(status_of(queue_redis, i) == "finished" for i in [blocking, *behind]))
    assert queue_redis.hmget(constants.job_key(blocking), "attempts", "crashes") == [b"2", b"1"]
    for job_id in behind:
        assert queue_redis.hmget(constants.job_key(job_id), "attempts", "crashes") == [b"1", None]
    assert all(status_of(queue_redis, i) == "finished" for i in warm_up)


def test_worker_processes_do_not_outlive_a_killed_supervisor(
    start_service: Start, queue_redis: redis.Redis
) -> None:
    worker = start_service(worker=True, WORKER_PROCESSES="2")
    key = constants.queue_workers_key("app-queue")
    wait_for(lambda: queue_redis.scard(key) == 2)
    children = [int(queue_redis.hget(k, "pid") or 0) for k in queue_redis.smembers(key)]

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    worker.signal(signal.SIGKILL)  # the supervisor only: no chance to stop its children
    wait_for(lambda: all(gone(pid) for pid in children), timeout=10)
    assert queue_redis.scard(key) == 0  # and they deregistered on their way out


# The supervisor alone: its worker processes are stand-ins (tests/worker/stand_ins.py) that a
# test tells how to end, so each assertion is about what the supervisor does with them.


class Supervised:
    """The worker container's supervisor over stand-in processes, as a real process."""

    def __init__(self, redis_url: str, folder: Path, **env: str) -> None:
        self.folder = folder
        self.log = folder / "supervisor.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        settings = base_env(
            redis_url, WORKER_MODE="true", PORT=str(port), FAKE_DIR=str(folder), **env
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from tests.worker.stand_ins import main; main()"],
                env=settings,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group holds the stand-ins, for the clean-up
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def pids(self) -> list[int]:
        """Every stand-in started so far, oldest first."""
        started = [p for p in self.folder.iterdir() if p.name.isdigit()]
        return [int(p.name) for p in sorted(started, key=lambda p: p.stat().st_mtime_ns)]

    def end(self, pid: int, code: int) -> None:
        (self.folder / f"{pid}.exit").write_text(str(code))

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
        return float(line.split()[1])


def running(pid: int) -> bool:
    """Not yet exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def supervise(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(**env: str) -> Supervised:
        supervised = Supervised(redis_url, tmp_path, **env)
        started.append(supervised)
        processes = int(env.get("WORKER_PROCESSES", "1"))
        wait_for(lambda: len(supervised.pids()) == processes, timeout=20)
        return supervised

    yield start
    for supervised in started:
        if supervised.process.poll() is None:
            os.killpg(supervised.process.pid, signal.SIGKILL)
            supervised.process.wait()
        for pid in supervised.pids():  # any it left behind (a failed test)
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_supervisor_replaces_a_worker_process_that_died_and_counts_the_restart(
    supervise: Callable[..., Supervised],
) -> None:
    # Given a supervisor with two worker processes
    supervisor = supervise(WORKER_PROCESSES="2")
    first, second = supervisor.pids()
    # When one dies with exit code 3
    supervisor.end(first, 3)
    # Then another takes its place, the other is untouched, and the restart is counted
    wait_for(lambda: len(supervisor.pids()) == 3)
    third = supervisor.pids()[2]
    wait_for(lambda: not running(first))
    assert running(second) and running(third)
    assert f"(pid {first}) died with exit code 3; restarting" in supervisor.output
    assert supervisor.metric("service_worker_process_restarts_total") == 1
    assert http("GET", f"{supervisor.url}/health")[2]["alive"] == 2


def test_the_supervisor_replaces_a_retired_worker_process_without_counting_a_restart(
    supervise: Callable[..., Supervised],
) -> None:
    # Given a supervisor with one worker process
    supervisor = supervise(WORKER_PROCESSES="1")
    (first,) = supervisor.pids()
    # When it retires (a job of its would not stop)
    supervisor.end(first, constants.EXIT_RETIRED)
    # Then another takes its place, and a retirement is no crash: no restart is counted
    wait_for(lambda: len(supervisor.pids()) == 2)
    assert f"(pid {first}) retired" in supervisor.output
    assert "died with exit code" not in supervisor.output
    assert supervisor.metric("service_worker_process_restarts_total") == 0


def test_the_supervisor_stops_its_worker_processes_and_logs_one_summary(
    supervise: Callable[..., Supervised],
) -> None:
    # Given two worker processes that each finished a job
    supervisor = supervise(WORKER_PROCESSES="2")
    # When the supervisor gets SIGTERM
    started = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    # Then both stop, and it exits 0 at once with one summary of what they did
    assert supervisor.process.wait(10) == constants.EXIT_OK
    assert time.monotonic() - started < 5
    assert not any(running(pid) for pid in supervisor.pids())
    (summary,) = [line for line in supervisor.output.splitlines() if "worker stopped:" in line]
    assert "worker stopped: 2 finished, 0 failed" in summary and summary.endswith("exit 0")


def test_a_worker_process_that_ignores_the_stop_is_killed_after_shutdown_timeout(
    supervise: Callable[..., Supervised],
) -> None:
    # Given a worker process that ignores SIGTERM and SIGUSR1 (its job will not stop)
    supervisor = supervise(WORKER_PROCESSES="1", FAKE_ON_SIGTERM="ignore", SHUTDOWN_TIMEOUT="1")
    (stubborn,) = supervisor.pids()
    # When the supervisor gets SIGTERM
    started = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    # Then it waits SHUTDOWN_TIMEOUT, interrupts, kills after FORCE_KILL_GRACE, and exits
    code = supervisor.process.wait(1 + constants.FORCE_KILL_GRACE + 10)
    took = time.monotonic() - started
    assert code == constants.EXIT_OK  # one signal: the timeout, not an operator, forced it
    assert 1 + constants.FORCE_KILL_GRACE - 0.5 < took < 1 + constants.FORCE_KILL_GRACE + 5
    assert not running(stubborn)
    assert "interrupting running jobs (SHUTDOWN_TIMEOUT passed)" in supervisor.output
    assert "worker stopped:" in supervisor.output


def test_a_supervisor_without_mongodb_imports_no_mongodb_client() -> None:
    """pymongo is megabytes of every worker container's supervisor: only MONGODB_URI needs it."""
    code = "import sys, service.worker.supervisor; print('pymongo' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
