"""rq-dashboard's own Flask app (as `rq-dashboard --json` builds it) on the service's Redis,
while a real worker process runs jobs: its queues view lists the three priorities from the
worker's start, its workers view shows the worker busy while it runs a job (the job's id on
the worker's hash, `current_job`, as RQ 1 and 2 wrote it) and RQ's counters moving as jobs
end, and its job views read our jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from rq.serializers import JSONSerializer

from tests.conftest import ServiceProcess, publish, wait_for

pytestmark = pytest.mark.slow

QUEUES = ["app-queue.high", "app-queue", "app-queue.low"]


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[Callable[[str], Any]]:
    """GET a JSON view of rq-dashboard on the queue's database (db 1)."""
    from rq_dashboard import web
    from rq_dashboard.cli import make_flask_app

    app = make_flask_app(None, None, None, "")
    app.config["RQ_DASHBOARD_REDIS_URL"] = f"{redis_url}/1"
    serializer = web.config.serializer
    web.config.serializer = JSONSerializer  # what --json sets
    web.setup_rq_connection(app)
    client = app.test_client()

    def view(path: str) -> Any:
        response = client.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)[:2000]
        return response.get_json()

    yield view
    web.config.serializer = serializer
    app.redis_conn.close()


def our_worker(view: Callable[[str], Any]) -> dict[str, Any]:
    workers = view("/0/data/workers.json")["workers"]
    assert len(workers) == 1, workers
    return dict(workers[0])


def test_rq_dashboard_shows_the_queues_the_busy_worker_and_the_counts(
    redis_url: str,
    queue_redis: redis.Redis,
    start_service: Callable[..., ServiceProcess],
    dashboard: Callable[[str], Any],
) -> None:
    # Given a worker, and no job published yet
    start_service(worker=True, WORKER_CONCURRENCY="2", WORKER_PROCESSING_INTERVAL="1000")

    # Then the queues view lists the three priority queues, and the worker idle
    def listed() -> list[str]:
        return [queue["name"] for queue in dashboard("/0/data/queues.json")["queues"]]

    wait_for(lambda: set(QUEUES) <= set(listed()), timeout=20)
    assert our_worker(dashboard)["state"] == "idle"
    assert our_worker(dashboard)["current_job"] == "idle"

    # When it runs a job, the workers view shows it busy, and its hash names the job
    running = publish(redis_url, "sleep", {"seconds": 3})
    wait_for(lambda: our_worker(dashboard)["state"] == "busy", timeout=10)
    (key,) = queue_redis.smembers("rq:workers")
    assert queue_redis.hget(key, "current_job") == running.encode()
    assert our_worker(dashboard)["successful_job_count"] == 0

    # And once it and a failing job have ended, RQ's counters have moved and it is idle
    publish(redis_url, "fail", {"message": "counted"})
    wait_for(lambda: our_worker(dashboard)["failed_job_count"] == 1, timeout=10)
    wait_for(lambda: our_worker(dashboard)["successful_job_count"] == 1, timeout=10)
    worker = wait_for(lambda: (w := our_worker(dashboard))["state"] == "idle" and w, timeout=10)
    assert worker["current_job"] == "idle"
    assert worker["total_working_time"] >= 3
    assert queue_redis.hget(key, "current_job") is None
    # The job views render our jobs too (with the JSON serializer)
    job = dashboard(f"/0/data/job/{running}.json")
    assert job["id"] == running and job["status"] == "finished"
