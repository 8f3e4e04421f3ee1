"""The whole lifecycle as a Redis user with least privilege: the ACL rule the README gives
(deploy/redis/acl-rule), and nothing more, for the API, the worker containers, housekeeping,
the history shipper and the status command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from service.config import constants
from service.dev.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import ROOT, ServiceProcess, base_env, http, wait_for

pytestmark = pytest.mark.slow
RULE = (ROOT / "deploy" / "redis" / "acl-rule").read_text().strip()
ADMIN_PASSWORD = "admin-password-for-the-test-only"
USER, PASSWORD = "jobs", "jobs-password-for-the-test-only"
HANDLERS = "tests.acl_handlers"
Start = Callable[..., ServiceProcess]


def setuser_command(password: str = "CHANGE-ME") -> str:
    return f"ACL SETUSER {USER} on >{password} {RULE}"


@pytest.fixture
def acl_redis() -> Iterator[tuple[redis.Redis, str]]:
    """A redis-server whose default user is an admin with a password, and the service's user
    made from the rule; yields the admin's client and the service user's URL."""
    server = EmbeddedRedis(password=ADMIN_PASSWORD).start()
    admin = redis.Redis(port=server.port, password=ADMIN_PASSWORD)
    admin.execute_command(*setuser_command(PASSWORD).split())
    admin.acl_log_reset()
    yield admin, f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}"
    admin.close()
    server.stop()


@pytest.fixture
def start(acl_redis: tuple[redis.Redis, str], mongo_uri: str, tmp_path: Path) -> Iterator[Start]:
    started: list[ServiceProcess] = []
    url = acl_redis[1]

    def start(worker: bool = False, **env: str) -> ServiceProcess:
        settings = base_env(
            url,
            WORKER_MODE="true" if worker else "false",
            PORT=str(free_port()),
            HANDLER_MODULES=HANDLERS,
            MONGODB_URI=mongo_uri,
            WORKER_PROCESSING_INTERVAL="1000",
            **env,
        )
        log = tmp_path / f"{'worker' if worker else 'api'}-{len(started)}.log"
        process = ServiceProcess(settings, log=log)
        started.append(process)
        return process.wait_healthy(30)

    yield start
    for process in started:
        process.stop()


def post(api: ServiceProcess, path: str, body: Any = None) -> Any:
    status, _, reply = http("POST", f"{api.url}{path}", body)
    assert status in (200, 202), (path, status, reply)
    return reply


def job(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{api.url}/jobs/{job_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_status(api: ServiceProcess, job_id: str, status: str, timeout: float = 20) -> Any:
    return wait_for(lambda: (j := job(api, job_id))["status"] == status and j, timeout)


def test_the_readme_gives_the_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    assert setuser_command() in readme


def test_the_rule_allows_every_command_our_scripts_call() -> None:
    """A script that calls a command the rule lacks fails for the restricted user only: each
    command named in a redis.call of service/store/*.lua must be in the rule."""
    allowed = {word[1:].upper() for word in RULE.split() if word.startswith("+")}
    called = set()
    for script in (ROOT / "service" / "store").glob("*.lua"):
        for line in script.read_text().splitlines():
            if re.search(r"redis\.p?call\(", line):
                command = line.split("call(", 1)[1].split(",", 1)[0]  # may be `a and 'X' or 'Y'`
                called |= set(re.findall(r"'([A-Z]+)'", command))
    assert called, "no redis.call found: has the scripts' layout changed?"
    assert called - allowed == set()


def test_the_rule_refuses_what_the_service_never_needs(acl_redis: tuple[redis.Redis, str]) -> None:
    client = redis.Redis.from_url(acl_redis[1])
    for command in (
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "requirepass"),
        ("SCRIPT", "FLUSH"),
        ("ACL", "LIST"),
        ("EVAL", "return 1", "0"),
        ("SHUTDOWN",),
        ("SET", "not-ours", "1"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.publish("elsewhere", "x")
    client.close()


def test_the_whole_lifecycle_runs_as_the_restricted_user(
    acl_redis: tuple[redis.Redis, str], start: Start, tmp_path: Path
) -> None:
    admin, url = acl_redis
    # Given the API and a worker container, both as the restricted user
    api = start()
    worker = start(worker=True, WORKER_PROCESSES="1", WORKER_CONCURRENCY="4")
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200, 30)

    # publish, run; retry; a delayed job promoted by housekeeping
    done = post(api, "/jobs", {"type": "acl.ok", "payload": {}})["id"]
    retried = post(api, "/jobs", {"type": "acl.flaky", "payload": {}})["id"]
    delayed = post(api, "/jobs", {"type": "acl.ok", "payload": {}, "delay": 1})["id"]
    assert job(api, delayed)["status"] == "scheduled"
    wait_status(api, done, "finished")
    assert wait_status(api, retried, "finished")["attempts"] == 2
    wait_status(api, delayed, "finished")

    # dead letter, then redrive once the gate is open
    gate = tmp_path / "gate"
    dead = post(api, "/jobs", {"type": "acl.gated", "payload": {"path": str(gate)}})["id"]
    wait_status(api, dead, "failed")
    listed = http("GET", f"{api.url}/dead?type=acl.gated")[2]
    assert [j["id"] for j in listed["jobs"]] == [dead]
    gate.touch()
    post(api, f"/dead/{dead}/retry")
    wait_status(api, dead, "finished")

    # pause: a job waits; cancel it queued; resume: the next one runs
    post(api, "/queues/app-queue/pause")
    waiting = post(api, "/jobs", {"type": "acl.ok", "payload": {}})["id"]
    after = post(api, "/jobs", {"type": "acl.ok", "payload": {}})["id"]
    post(api, f"/jobs/{waiting}/cancel")
    assert job(api, waiting)["status"] == "canceled"
    assert job(api, after)["status"] == "queued"
    post(api, "/queues/app-queue/resume")
    wait_status(api, after, "finished")

    # cancel a running job (the worker is told on its command channel)
    held = tmp_path / "never"
    running = post(api, "/jobs", {"type": "acl.hold", "payload": {"path": str(held)}})["id"]
    wait_status(api, running, "started")
    post(api, f"/jobs/{running}/cancel")
    wait_status(api, running, "canceled")

    # the schedule fires
    fired = wait_for(lambda: _fired(admin), 20)
    assert fired >= 1

    # a SIGKILLed container's job is recovered by the next one's housekeeping
    release = tmp_path / "release"
    lost = post(api, "/jobs", {"type": "acl.hold", "payload": {"path": str(release)}})["id"]
    wait_status(api, lost, "started")
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)
    worker = start(worker=True, WORKER_PROCESSES="1")
    release.touch()
    recovered = wait_status(api, lost, "finished", timeout=40)
    assert recovered["crashes"] == 1

    # history (MongoDB), metrics, the status command
    history = wait_for(
        lambda: (
            (r := http("GET", f"{api.url}/jobs?type=acl.gated"))[0] == 200
            and r[2]["jobs"]
            and r[2]["jobs"][0]["status"] == "finished"
            and r[2]
        ),
        20,
    )
    assert history["jobs"][0]["id"] == dead
    status, metrics = _get_text(f"{api.url}/metrics")
    assert (
        status == 200
        and 'service_queue_waiting_jobs{priority="default",queue="app-queue"}' in metrics
    )
    status, metrics = _get_text(f"{worker.url}/metrics")
    assert status == 200 and 'service_jobs_finished_total{type="acl.hold"} 1.0' in metrics
    status_command = subprocess.run(
        [sys.executable, "-m", "service", "status", "--json"],
        env=base_env(url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status_command.returncode == 0, status_command.stderr

    # Then Redis refused nothing but the one read the rule withholds on purpose (CONFIG GET,
    # which can read secrets), and the service said it could not check persistence
    refused = [(e["object"], e["reason"]) for e in admin.acl_log(count=1000)]
    assert {o for o, _ in refused} <= {"config|get"}, refused
    outputs = [p.read_text() for p in tmp_path.glob("*.log")]
    assert any("cannot read Redis's configuration" in o for o in outputs)
    assert not [o for o in [*outputs, status_command.stderr] if "NOPERM" in o]


def _fired(admin: redis.Redis) -> int:
    client = redis.Redis(
        host=admin.connection_pool.connection_kwargs["host"],
        port=admin.connection_pool.connection_kwargs["port"],
        password=ADMIN_PASSWORD,
        db=1,
    )
    try:
        ids = client.zrange(constants.SCHEDULES_KEY, 0, -1)
        return sum(int(client.hget(constants.schedule_key(i.decode()), "fired") or 0) for i in ids)
    finally:
        client.close()


def _get_text(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()
