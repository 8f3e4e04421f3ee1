"""End to end, as a deployment runs it: the API and two worker containers as separate
processes configured by the env files in env/, talking only through Redis and HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.dev.embedded_redis import free_port
from tests.conftest import ROOT, ServiceProcess, env_file, http, wait_for

pytestmark = pytest.mark.slow


def deployed(name: str, redis_url: str, log: Path) -> ServiceProcess:
    """Start one 'container' from env/<name>, pointed at the test's Redis on a free port."""
    env = {k: v for k, v in env_file(name).items() if v}
    for key in ("REDIS_HOST", "REDIS_PORT", "QUEUE_REDIS_DB"):
        env.pop(key, None)
    env.update(
        PATH=os.environ["PATH"],
        PYTHONPATH=str(ROOT),
        PORT=str(free_port()),
        REDIS_URL=f"{redis_url}/0",
        QUEUE_REDIS_URL=f"{redis_url}/1",
        HOST="127.0.0.1",
    )
    return ServiceProcess(env, log=log)


def test_api_and_two_workers_from_the_env_files(redis_url: str, tmp_path: Path) -> None:
    processes = [
        deployed("api.development", redis_url, tmp_path / "api.log"),
        deployed("worker.development", redis_url, tmp_path / "worker-a.log"),
        deployed("worker.development", redis_url, tmp_path / "worker-b.log"),
    ]
    try:
        api, *workers = [p.wait_healthy() for p in processes]
        # Given jobs posted one by one and in a batch
        ids = [
            http("POST", f"{api.url}/jobs", {"type": "echo", "payload": {"n": n}})[2]["id"]
            for n in range(20)
        ]
        status, _, body = http(
            "POST", f"{api.url}/jobs/batch", {"jobs": [{"type": "noop"}] * 50 + [{"type": "fail"}]}
        )
        assert status == 202
        ids += [job["id"] for job in body["jobs"]]

        # Then every one ends as it should, run by the two worker containers
        def view(job_id: str) -> dict[str, object]:
            return http("GET", f"{api.url}/jobs/{job_id}")[2]  # type: ignore[no-any-return]

        def all_done() -> bool:
            return all(view(i)["status"] in ("finished", "failed") for i in ids)

        wait_for(all_done, timeout=30, interval=0.1)
        assert [view(i)["result"] for i in ids[:20]] == [{"n": n} for n in range(20)]
        assert view(ids[-1])["status"] == "failed"
        assert view(ids[-1])["error"] == "service.dev.demo.JobFailed: failed on purpose"
        assert {view(i)["worker"].split(".")[1] for i in ids[:-1]} <= {  # type: ignore[union-attr]
            str(w.process.pid) for w in workers
        }

        # And the health endpoints answer as container health checks
        assert http("GET", f"{api.url}/health")[0] == 200
        for worker in workers:
            status, _, health = http("GET", f"{worker.url}/health")
            assert (status, health["alive"]) == (200, 2), health
            # ready once its processes consume: a slow start may trail the other container's
            wait_for(lambda w=worker: http("GET", f"{w.url}/ready")[0] == 200)

        def queues() -> dict[str, dict[str, int]]:
            return {q["name"]: q for q in http("GET", f"{api.url}/queues")[2]["queues"]}

        # every worker process registers as it starts (a slow start may trail the jobs)
        wait_for(lambda: queues()["app-queue"]["workers"] == 4)
        default = queues()["app-queue"]
        assert (default["finished"], default["failed"], default["waiting"]) == (70, 1, 0), default
        assert queues()["app-queue.high"]["workers"] == 4

        # When they get SIGTERM, each exits cleanly
        for process in processes:
            process.signal(signal.SIGTERM)
        codes = [p.wait(30) for p in processes]
        assert codes == [0, 0, 0], [p.output[-2000:] for p in processes]
    finally:
        for process in processes:
            process.stop()


def test_dev_mode_runs_everything_with_a_private_redis(tmp_path: Path) -> None:
    api_port, worker_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "PORT": str(api_port),
        "WORKER_PORT": str(worker_port),
        "WORKER_CONCURRENCY": "1",
        "API_KEYS": "dev-mode-key-never-printed",
    }
    key = {"Authorization": "Bearer dev-mode-key-never-printed"}
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "service", "dev"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "curl -s -X POST" in log.read_text() or dev.poll() is not None, 30)
        output = log.read_text()
        assert f"http://127.0.0.1:{api_port}" in output
        # The curl to try names the header, never the key: output ends up in scrollback and logs.
        assert "Bearer <one of API_KEYS>" in output and "dev-mode-key" not in output
        redis_port = re.search(r"on redis://127\.0\.0\.1:(\d+)", output)
        assert redis_port, output
        job = http(
            "POST",
            f"http://127.0.0.1:{api_port}/jobs",
            {"type": "echo", "payload": {"a": 1}},
            headers=key,
        )
        assert job[0] == 202
        url = f"http://127.0.0.1:{api_port}/jobs/{job[2]['id']}"
        wait_for(lambda: http("GET", url, headers=key)[2]["status"] == "finished")
        assert http("GET", f"http://127.0.0.1:{worker_port}/health")[0] == 200
        # history works in dev mode too, in a file database under .service-dev/
        history = f"http://127.0.0.1:{api_port}/jobs?status=finished"
        wait_for(
            lambda: (
                [j["id"] for j in http("GET", history, headers=key)[2]["jobs"]] == [job[2]["id"]]
            )
        )
        assert (tmp_path / ".service-dev" / "mongo.sqlite").exists()

        dev.send_signal(signal.SIGINT)  # Ctrl-C
        assert dev.wait(30) == 0
        with pytest.raises(ConnectionRefusedError):  # the private Redis is gone too
            socket.create_connection(("127.0.0.1", int(redis_port.group(1))), timeout=1)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
