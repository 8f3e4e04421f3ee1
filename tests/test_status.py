"""`python -m service status`: counts, workers and failures read back from a real Redis."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio

from service import __main__ as entry
from service import status
from service.config import constants
from service.config.settings import Settings, load
from service.dev.embedded_redis import free_port
from service.jobs import records
from service.jobs.schedule import Schedule
from service.store.schedules import Definition, Schedules
from tests.conftest import ROOT, ServiceProcess, base_env, publish, wait_for


def settings_for(redis_url: str, **env: str) -> Settings:
    return load(base_env(redis_url, **env))


def publish_job(
    redis_url: str, queue: str, job_type: str = "echo", run_at: float | None = None
) -> str:
    return publish(redis_url, job_type, queue=queue, timeout=60, run_at=run_at)


def status_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert status.main(settings, ["--json"]) == 0
    document: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return document


def queue_row(document: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [q for q in document["queues"] if q["queue"] == name]
    return row


def test_counts_per_queue_and_priority_from_redis(
    redis_url: str, queue_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given: jobs waiting in every priority of app-queue, the oldest queued two minutes ago,
    now = time.time()
    oldest = publish_job(redis_url, "app-queue.low")
    queue_redis.hset(constants.job_key(oldest), "enqueued_at", records.utc_iso(now - 120))
    for queue in ("app-queue.high", "app-queue", "app-queue"):
        publish_job(redis_url, queue)
    publish_job(redis_url, "app-queue", run_at=now + 3600)  # scheduled, not due
    # a queue nobody serves, with a due scheduled job and none waiting,
    publish_job(redis_url, "reports.high", run_at=now - 5)
    publish_job(redis_url, "reports", run_at=now + 60)
    # a live worker registration, one that expired, and history events waiting.
    queue_redis.hset(
        constants.worker_key("host.1.ab12.0"),
        mapping={
            "hostname": "host",
            "pid": 4242,
            "state": "idle",
            "queues": "app-queue.high,app-queue,app-queue.low",
            "last_heartbeat": records.utc_iso(now - 2),
        },
    )
    for queue in ("app-queue.high", "app-queue", "app-queue.low"):
        queue_redis.sadd(constants.queue_workers_key(queue), constants.worker_key("host.1.ab12.0"))
    queue_redis.sadd(constants.WORKERS_KEY, constants.worker_key("host.1.ab12.0"))
    queue_redis.sadd(constants.WORKERS_KEY, constants.worker_key("gone.2.cd34.0"))
    queue_redis.xadd(constants.HISTORY_STREAM, {"id": "x"})
    queue_redis.set(constants.HISTORY_DROPPED_KEY, 3)

    # When
    document = status_json(settings_for(redis_url), capsys)

    # Then
    app = queue_row(document, "app-queue")
    assert app["waiting"] == {"high": 1, "default": 2, "low": 1}
    assert (app["scheduled"], app["due"], app["running"], app["dead"]) == (1, 0, 0, 0)
    assert 120 <= app["oldest_waiting_seconds"] < 180
    assert app["workers"] == 1
    reports = queue_row(document, "reports")
    assert reports["waiting"] == {"high": 0, "default": 0, "low": 0}
    assert (reports["scheduled"], reports["due"], reports["workers"]) == (2, 1, 0)
    assert reports["oldest_waiting_seconds"] is None
    (worker,) = document["workers"]
    assert worker["name"] == "host.1.ab12.0" and worker["host"] == "host"
    assert (worker["pid"], worker["state"]) == (4242, "idle")
    assert worker["queues"] == ["app-queue.high", "app-queue", "app-queue.low"]
    assert 2 <= worker["heartbeat_age_seconds"] < 60
    assert document["failures"] == []
    assert (document["history_pending"], document["history_dropped"]) == (1, 3)
    assert document["redis"] == f"{redis_url}/1"

    # And the text: one aligned row per named queue.
    assert status.main(settings_for(redis_url), []) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("QUEUE"))
    row = next(line for line in lines if line.startswith("app-queue "))
    assert row.split()[:8] == ["app-queue", "1", "2", "1", "1", "0", "0", "0"]
    assert row.split()[-2] == "1" and row.split()[-3].startswith("2m")
    assert row.split()[-1] == "-"  # not paused
    assert len(row) == len(header)  # right-aligned under its header
    assert next(line for line in lines if line.startswith("reports ")).split()[1:] == (
        ["0", "0", "0", "2", "1", "0", "0", "-", "0", "-"]
    )
    assert "WORKERS (1 alive)" in text and "host.1.ab12.0" in text and "gone" not in text
    assert "RECENT FAILURES: none" in text
    assert "HISTORY: 1 events waiting for MongoDB, 3 dropped" in text


def test_a_paused_queue_is_marked_also_one_nothing_else_names(
    redis_url: str, queue_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given app-queue and a queue nobody serves paused (as POST /queues/{name}/pause does)
    for base in ("app-queue", "ghost"):
        queue_redis.sadd(constants.PAUSED_KEY, base, f"{base}.high", f"{base}.low")
    publish_job(redis_url, "reports")
    # Then the JSON and the text say so, and not of the queue left running
    document = status_json(settings_for(redis_url), capsys)
    paused = {q["queue"]: q["paused"] for q in document["queues"]}
    assert paused == {"app-queue": True, "ghost": True, "reports": False}
    assert status.main(settings_for(redis_url), []) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("QUEUE"))
    assert header.split()[-1] == "PAUSED"
    rows = {line.split()[0]: line.split()[-1] for line in lines if line.startswith(tuple(paused))}
    assert rows == {"app-queue": "paused", "ghost": "paused", "reports": "-"}


def test_schedules_listed_with_their_timing_fires_and_pause(
    redis_url: str, queue_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a cron schedule in New York that fired once and missed two, and a paused interval
    moment = 1_800_000_000  # 2027-01-15T03:00:00-05:00, an on-the-hour fire of "0 * * * *"
    nightly = Definition(
        "echo/nightly",
        "echo",
        "app-queue",
        60,
        0,
        "",
        60,
        60,
        Schedule(cron="0 * * * *", timezone="America/New_York", name="nightly"),
    )
    often = Definition("noop/often", "noop", "app-queue", 60, 0, "", 60, 60, Schedule(every=30))
    schedules = Schedules(queue_redis)
    schedules.declare([nightly, often], moment - 1800)
    schedules.fire(nightly, moment, moment + 3 * 3600 + 5)  # misfired: fire_once, 3 dropped
    queue_redis.hset(constants.schedule_key(often.id), "pause", 1)
    queue_redis.zadd(constants.SCHEDULES_KEY, {often.id: "+inf"})
    # Then the JSON has each, soonest first, and the text a SCHEDULES table
    document = status_json(settings_for(redis_url), capsys)
    assert document["schedules"] == [
        {
            "id": "echo/nightly",
            "cron": "0 * * * *",
            "every": None,
            "timezone": "America/New_York",
            "next_fire": "2027-01-15T07:00:00-05:00",
            "last_fire": "2027-01-15T03:00:00-05:00",
            "paused": False,
            "fired": 1,
            "missed": 3,
        },
        {
            "id": "noop/often",
            "cron": None,
            "every": 30,
            "timezone": "UTC",
            "next_fire": None,
            "last_fire": None,
            "paused": True,
            "fired": 0,
            "missed": 0,
        },
    ]
    assert status.main(settings_for(redis_url), []) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("SCHEDULES (2)")
    assert lines[start + 1].split() == [
        "ID",
        "CRON/EVERY",
        "TIMEZONE",
        "NEXT",
        "FIRE",
        "LAST",
        "FIRE",
        "PAUSED",
        "FIRED",
        "MISSED",
    ]
    assert lines[start + 2].split()[-4:] == ["2027-01-15T03:00:00-05:00", "-", "1", "3"]
    assert "every 30s" in lines[start + 3] and lines[start + 3].split()[-3:] == ["paused", "0", "0"]


def child_of(pid: int, parent: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_status_of_a_running_worker(
    redis_url: str,
    queue_redis: redis.Redis,
    start_service: Callable[..., ServiceProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given: one worker process, which has dead-lettered a job and now runs a blocking one,
    worker = start_service(
        worker=True, WORKER_CONCURRENCY="1", WORKER_PROCESSING_INTERVAL="1000", SHUTDOWN_TIMEOUT="1"
    )
    app_redis = redis.Redis.from_url(f"{redis_url}/0")
    failed = publish(redis_url, "fail", {"message": "SMTP refused"})
    wait_for(lambda: queue_redis.zcard(constants.registry_key("failed", "app-queue")) == 1)
    blocked = publish(redis_url, "test.block", {"key": "release"})
    wait_for(lambda: app_redis.lrange("started", 0, -1) == [blocked.encode()])
    # so jobs published now wait: two of default priority, one high, one low.
    for queue in ("app-queue", "app-queue", "app-queue.high", "app-queue.low"):
        publish(redis_url, "echo", queue=queue)
    settings = settings_for(redis_url)

    # When the heartbeat has said the process is busy,
    def busy() -> dict[str, Any] | None:
        document = status_json(settings, capsys)
        workers = document["workers"]
        busy = workers and workers[0]["state"] == "busy" and workers[0]["slots"] == "1/1"
        return document if busy else None

    document = wait_for(busy, timeout=15)

    # Then
    app = queue_row(document, "app-queue")
    assert app["waiting"] == {"high": 1, "default": 2, "low": 1}
    assert (app["scheduled"], app["due"], app["running"], app["dead"]) == (0, 0, 1, 1)
    assert app["workers"] == 1
    assert 0 <= app["oldest_waiting_seconds"] < 30
    (process,) = document["workers"]
    assert process["host"] == socket.gethostname()
    assert child_of(process["pid"], worker.process.pid)  # a process of this supervisor
    assert {"app-queue.high", "app-queue", "app-queue.low"} <= set(process["queues"])
    assert process["heartbeat_age_seconds"] < 3 * 1.0 + 1
    (failure,) = document["failures"]
    assert failure["id"] == failed and failure["type"] == "fail"
    assert failure["queue"] == "app-queue"
    assert failure["error"] == "service.dev.demo.JobFailed: SMTP refused"
    assert failure["ended_at"] is not None

    # And the command line, as an operator types it, prints the same.
    result = subprocess.run(
        [sys.executable, "-m", "service", "status"],
        env=base_env(redis_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("app-queue "))
    assert row.split()[:8] == ["app-queue", "1", "2", "1", "0", "0", "1", "1"]
    assert row.split()[-2:] == ["1", "-"]  # one worker, not paused
    (worker_line,) = [line for line in lines if line.startswith(process["name"])]
    assert worker_line.split()[1:5] == [socket.gethostname(), str(process["pid"]), "busy", "1/1"]
    (failure_line,) = [line for line in lines if line.startswith(failed)]
    assert failure_line.split()[1:3] == ["fail", "app-queue"]
    assert failure_line.endswith("service.dev.demo.JobFailed: SMTP refused")
    app_redis.set("release", 1)  # let the blocked job finish before the worker stops
    app_redis.close()


def test_newest_failures_first_and_limited(
    redis_url: str, queue_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three dead jobs, failed one second apart (written as the worker's scripts do),
    ids = [publish_job(redis_url, "app-queue", "fail") for _ in range(3)]
    now = time.time()
    for n, job_id in enumerate(ids):
        ended = now - 10 + n
        queue_redis.lrem(constants.queue_key("app-queue"), 0, job_id)
        queue_redis.hset(
            constants.job_key(job_id),
            mapping={"status": "failed", "ended_at": records.utc_iso(ended)},
        )
        queue_redis.zadd(
            constants.registry_key("failed", "app-queue"), {job_id: ended + constants.FAILURE_TTL}
        )
        queue_redis.xadd(
            constants.result_key(job_id),
            {
                "type": 2,
                "exc_string": records.encode_exc_string(f"Traceback\nJobFailed: number {n}"),
            },
        )

    # When only two are asked for
    document = (
        status.main(settings_for(redis_url), ["--json", "--failures", "2"]),
        orjson.loads(capsys.readouterr().out),
    )[1]

    # Then the newest two, newest first, each with its error's last line.
    assert [f["id"] for f in document["failures"]] == [ids[2], ids[1]]
    assert [f["error"] for f in document["failures"]] == [
        "JobFailed: number 2",
        "JobFailed: number 1",
    ]
    assert queue_row(document, "app-queue")["dead"] == 3
    assert status.main(settings_for(redis_url), ["--json", "--failures", "0"]) == 0
    assert orjson.loads(capsys.readouterr().out)["failures"] == []


def test_unreachable_redis_exits_69_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/1"
    settings = load({"QUEUE_REDIS_URL": url, "REDIS_URL": "redis://127.0.0.1:1/0"})

    assert status.main(settings, []) == constants.EXIT_UNAVAILABLE == 69

    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("status: Redis at redis://:*****@127.0.0.1:") and "unavailable" in err
    assert "hunter2" not in err


@pytest.mark.parametrize(
    "argv", [["status", "--bogus"], ["status", "--failures", "-1"], ["status", "--failures", "x"]]
)
def test_bad_options_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(argv) == constants.EXIT_USAGE == 64
    assert "python -m service status" in capsys.readouterr().err


def test_other_commands_still_take_no_arguments() -> None:
    assert entry.main(["healthcheck", "--json"]) == 64
    assert entry.main(["stats"]) == 64


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.04, "0.0s"), (3.25, "3.2s"), (45.9, "45s"), (725, "12m05s"), (11220, "3h07m")],
)
def test_ages_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert status._age(seconds) == text
