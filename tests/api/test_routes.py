"""The publisher's HTTP contract, against a real Redis: statuses, errors, nothing half-enqueued."""

from __future__ import annotations

import base64
import operator
import signal
import zlib
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from service import status
from service.config import constants
from service.config.settings import load
from tests.conftest import make_client


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


def assert_nothing_enqueued(queue_redis: redis.Redis) -> None:
    assert queue_redis.keys("rq:job:*") == []
    assert queue_redis.llen(constants.queue_key("app-queue")) == 0


def test_post_job_is_accepted_and_stored_in_rqs_data_model(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    response = client.post("/jobs", json={"type": "echo", "payload": {"hello": "world"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["type"] == "echo" and body["queue"] == "app-queue"
    assert response.headers["location"] == f"/jobs/{body['id']}"
    assert queue_redis.lrange("rq:queue:app-queue", 0, -1) == [body["id"].encode()]
    assert queue_redis.smembers("rq:queues") == {b"rq:queue:app-queue"}
    job = Job.fetch(body["id"], connection=queue_redis, serializer=JSONSerializer)
    assert job.get_status() == "queued"
    assert job.origin == "app-queue"
    assert job.func_name == "echo"
    assert job.args == [{"hello": "world"}]
    assert job.timeout == constants.DEFAULT_JOB_TIMEOUT


def test_get_job(client: TestClient) -> None:
    job_id = client.post("/jobs", json={"type": "noop"}).json()["id"]
    view = client.get(f"/jobs/{job_id}").json()
    assert view["id"] == job_id and view["status"] == "queued" and view["type"] == "noop"
    assert view["attempts"] == 0 and view["created_at"].endswith("Z")


@pytest.mark.parametrize("job_id", ["f" * 32, "no:such", "a.b"])
def test_unknown_job_is_404(client: TestClient, job_id: str) -> None:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_malformed_json_is_400(client: TestClient, queue_redis: redis.Redis) -> None:
    response = client.post(
        "/jobs", content=b'{"type": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert_nothing_enqueued(queue_redis)


def test_wrong_content_type_is_415(client: TestClient, queue_redis: redis.Redis) -> None:
    response = client.post(
        "/jobs", content=b'{"type": "noop"}', headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert_nothing_enqueued(queue_redis)


def test_declared_body_over_the_limit_is_413(redis_url: str, queue_redis: redis.Redis) -> None:
    with make_client(redis_url, MAX_BODY_BYTES="1024") as client:
        response = client.post("/jobs", json={"type": "echo", "payload": {"x": "a" * 2000}})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert_nothing_enqueued(queue_redis)


def test_chunked_body_over_the_limit_is_413(redis_url: str, queue_redis: redis.Redis) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "echo", "payload": {"x": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}}'

    with make_client(redis_url, MAX_BODY_BYTES="1024") as client:
        response = client.post(
            "/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert_nothing_enqueued(queue_redis)


def test_unknown_type_is_422_listing_known_types(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    response = client.post("/jobs", json={"type": "nope", "payload": {}})
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert {"echo", "noop", "sleep", "fail"} <= set(details["known_types"])
    assert details["errors"] == [{"field": "type", "message": "unknown job type 'nope'"}]
    assert_nothing_enqueued(queue_redis)


def test_payload_errors_are_all_reported(client: TestClient, queue_redis: redis.Redis) -> None:
    response = client.post(
        "/jobs", json={"type": "sleep", "payload": {"seconds": -1, "x": 1}, "colour": "red"}
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["error"]["details"]["errors"]}
    assert fields == {"payload.seconds", "payload.x", "colour"}
    assert_nothing_enqueued(queue_redis)


@pytest.mark.parametrize("body", [[], "job", {"payload": {}}, {"type": 3}])
def test_malformed_job_objects_are_422(client: TestClient, body: object) -> None:
    assert client.post("/jobs", json=body).status_code == 422


def test_batch_is_published_in_order(client: TestClient, queue_redis: redis.Redis) -> None:
    jobs = [
        {"type": "noop"},
        {"type": "echo", "payload": {"n": 1}},
        {"type": "sleep", "payload": {"seconds": 0}},
    ]
    response = client.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 202
    ids = [j["id"] for j in response.json()["jobs"]]
    assert [j["type"] for j in response.json()["jobs"]] == ["noop", "echo", "sleep"]
    assert queue_redis.lrange("rq:queue:app-queue", 0, -1) == [i.encode() for i in ids]


def test_batch_is_all_or_nothing(client: TestClient, queue_redis: redis.Redis) -> None:
    jobs = [{"type": "noop"}, {"type": "sleep", "payload": {}}, {"type": "nope"}]
    response = client.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["error"]["details"]["errors"]]
    assert fields == ["jobs[1].payload.seconds", "jobs[2].type"]
    assert_nothing_enqueued(queue_redis)


@pytest.mark.parametrize(
    "body", [{}, {"jobs": []}, {"jobs": "x"}, {"jobs": [{"type": "noop"}], "extra": 1}]
)
def test_malformed_batches_are_422(client: TestClient, body: object) -> None:
    assert client.post("/jobs/batch", json=body).status_code == 422


def test_batch_size_is_capped(client: TestClient, queue_redis: redis.Redis) -> None:
    jobs = [{"type": "noop"}] * (constants.MAX_BATCH_JOBS + 1)
    response = client.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "batch_too_large"
    assert_nothing_enqueued(queue_redis)


def test_queues(client: TestClient) -> None:
    client.post("/jobs", json={"type": "noop"})
    client.post("/jobs", json={"type": "noop", "priority": "low"})
    queues = client.get("/queues").json()["queues"]
    assert [q["name"] for q in queues] == [
        "app-queue.high",
        "reports.high",
        "app-queue",
        "reports",
        "app-queue.low",
        "reports.low",
    ]  # each queue a job type names (tests.sample_handlers: reports), high first
    assert [q["waiting"] for q in queues] == [0, 0, 1, 0, 1, 0]
    assert queues[2] == {
        "name": "app-queue",
        "waiting": 1,
        "started": 0,
        "scheduled": 0,
        "finished": 0,
        "failed": 0,
        "workers": 0,
        "paused": False,
    }


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ok", "redis": "ok"}


def test_redis_down_is_503_with_retry_after_and_not_ready() -> None:
    from service.dev.embedded_redis import free_port

    dead = f"redis://127.0.0.1:{free_port()}"
    with make_client(dead) as client:
        response = client.post("/jobs", json={"type": "noop"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(constants.RETRY_AFTER_SECONDS)
        assert response.json()["error"]["code"] == "queue_unavailable"
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()) == (
            503,
            {"status": "unavailable", "redis": "unavailable"},  # named, not its error text
        )
        assert client.get("/health").status_code == 200


def test_openapi_is_generated_from_the_registry(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["Job_sleep"]["properties"]["payload"]["properties"]["seconds"]["minimum"] == 0
    assert schemas["Job_test_flaky"]["properties"]["type"] == {"const": "test.flaky"}
    assert "/jobs/batch" in document["paths"]
    options = schemas["Job_sleep"]["properties"]
    assert {
        "priority",
        "delay",
        "run_at",
        "max_retries",
        "backoff",
        "timeout",
        "idempotency_key",
        "result_ttl",
        "failure_ttl",
    } <= set(options)
    assert schemas["Backoff"]["properties"]["type"]["enum"] == ["fixed", "exponential"]
    assert "post" in document["paths"]["/jobs/{job_id}/cancel"]
    assert document["paths"]["/jobs/{job_id}"]["delete"]["deprecated"] is True
    # Without MONGODB_URI there is no history to list: GET /jobs is not offered.
    assert set(document["paths"]["/jobs"]) == {"post"}


def test_a_405_allows_every_method_its_path_serves_as_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for template, operations in document["paths"].items():
        path = template.replace("{job_id}", "0" * 32)
        documented = {method.upper() for method in operations}
        unserved = next(m for m in ("PUT", "PATCH", "POST", "DELETE") if m not in documented)
        response = client.request(unserved, path)
        assert response.status_code == 405, path
        assert response.json()["error"]["code"] == "method_not_allowed"
        allowed = set(response.headers["allow"].split(", "))
        assert allowed == documented | ({"HEAD"} if "GET" in documented else set()), path
    # A path of its own answers every method, never a lookup of a job called `batch`.
    assert client.get("/jobs/batch").headers["allow"] == "POST"
    # Without MONGODB_URI there is no GET /jobs: a 405 that says why.
    history = client.get("/jobs")
    assert (history.status_code, history.headers["allow"]) == (405, "POST")
    assert history.json()["error"]["code"] == "history_disabled"


def test_not_found_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [("GET", "/health/"), ("POST", "/jobs/")])
def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_host(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(
        method,
        path,
        headers={"Host": "evil.example"},
        json={"type": "noop"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "location" not in response.headers


class TestApiKeys:
    @pytest.fixture
    def client(self, redis_url: str) -> Iterator[TestClient]:
        with make_client(redis_url, API_KEYS="key-one,key-two") as test_client:
            yield test_client

    @pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic key-one", "key-one"])
    def test_job_endpoints_need_a_valid_key(
        self, client: TestClient, queue_redis: redis.Redis, header: str | None
    ) -> None:
        headers = {"Authorization": header} if header else {}
        for method, path in [
            ("POST", "/jobs"),
            ("GET", "/jobs/abc"),
            ("GET", "/queues"),
            ("POST", "/jobs/batch"),
        ]:
            response = client.request(method, path, json={"type": "noop"}, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert_nothing_enqueued(queue_redis)

    @pytest.mark.parametrize("key", ["key-one", "key-two"])
    def test_any_configured_key_works(self, client: TestClient, key: str) -> None:
        response = client.post(
            "/jobs", json={"type": "noop"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202

    def test_probes_stay_open_and_what_tells_about_jobs_needs_a_key(
        self, client: TestClient
    ) -> None:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        for path in ("/metrics", "/backlog", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
            assert client.get(path, headers={"Authorization": "Bearer key-two"}).status_code == 200
        document = client.get("/openapi.json", headers={"Authorization": "Bearer key-one"}).json()
        assert document["components"]["securitySchemes"]["bearer"]
        assert document["paths"]["/backlog"]["get"]["security"] == [{"bearer": []}]
        assert "401" in document["paths"]["/backlog"]["get"]["responses"]
        # a read-only key's refusal is stated where it can happen: on changes only
        assert "403" not in document["paths"]["/backlog"]["get"]["responses"]
        assert (
            "read_only_key" in document["paths"]["/jobs"]["post"]["responses"]["403"]["description"]
        )

    def test_openapi_public_serves_the_document_without_a_key(self, redis_url: str) -> None:
        with make_client(redis_url, API_KEYS="key-one", OPENAPI_PUBLIC="true") as client:
            assert client.get("/openapi.json").status_code == 200
            assert client.get("/metrics").status_code == 401  # the rest is unchanged
            assert client.get("/backlog").status_code == 401


def test_without_api_keys_everything_is_open(client: TestClient) -> None:
    for path in ("/metrics", "/backlog", "/openapi.json", "/queues"):
        assert client.get(path).status_code == 200, path


def test_backlog_counts_every_priority_and_due_scheduled_jobs(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    client.post("/jobs", json={"type": "noop", "priority": "high"})
    client.post("/jobs", json={"type": "noop", "priority": "low"})
    due = client.post("/jobs", json={"type": "noop", "delay": 3600}).json()["id"]
    client.post("/jobs", json={"type": "noop", "delay": 3600})  # not due: not backlog
    queue_redis.zadd("rq:scheduled:app-queue", {due: 1})  # its time has come
    body = client.get("/backlog").json()
    assert (body["backlog"], body["waiting"], body["due_scheduled"]) == (3, 2, 1)
    assert body["queues"]["app-queue.high"] == 1 and body["queues"]["app-queue"] == 1


# --- Jobs RQ itself enqueued, pickled (its default serializer): read, never unpickled ---------
def rq_pickled_jobs(queue_redis: redis.Redis) -> dict[str, str]:
    """Jobs enqueued by RQ itself, their data pickled; its SimpleWorker runs two of them, so
    their results are pickled too: the ids by status."""
    queue = Queue("app-queue", connection=queue_redis)
    finished = queue.enqueue(operator.add, 1, 2)
    failed = queue.enqueue(operator.truediv, 1, 0)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert SimpleWorker([queue], connection=queue_redis).work(burst=True)
    finally:  # the worker installs its own
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    ids = {"finished": finished.id, "failed": failed.id}
    ids["queued"] = queue.enqueue(operator.add, 3, 4).id
    ids["scheduled"] = queue.enqueue_in(timedelta(hours=1), operator.add, 5, 6).id
    # Pickled indeed: the data, and the result of the finished one.
    for job_id in ids.values():
        assert zlib.decompress(queue_redis.hget(f"rq:job:{job_id}", "data"))[:1] == b"\x80"
    ((_, fields),) = queue_redis.xrange(f"rq:results:{finished.id}")
    assert base64.b64decode(fields[b"return_value"])[:1] == b"\x80"
    return ids


def test_jobs_rq_pickled_are_read_without_their_data(
    client: TestClient,
    redis_url: str,
    queue_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = rq_pickled_jobs(queue_redis)
    for state, job_id in ids.items():
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        view = response.json()
        assert (view["id"], view["status"], view["queue"]) == (job_id, state, "app-queue")
        assert view["type"] is None and view["result"] is None
        assert view["created_at"].endswith("Z")
    finished = client.get(f"/jobs/{ids['finished']}").json()
    assert [entry["outcome"] for entry in finished["history"]] == ["finished"]
    assert finished["worker"] and finished["ended_at"] and finished["error"] is None
    failed = client.get(f"/jobs/{ids['failed']}").json()
    assert failed["error"] == "ZeroDivisionError: division by zero"

    # The dead-letter queue lists the failed one, without type or payload.
    (dead,) = client.get("/dead").json()["jobs"]
    assert (dead["id"], dead["type"], dead["payload"]) == (ids["failed"], None, None)
    assert dead["error"] == "ZeroDivisionError: division by zero"
    assert client.get("/dead?type=echo").json()["jobs"] == []
    assert client.get("/dead?error=zero").json()["jobs"][0]["id"] == ids["failed"]

    # `python -m service status` too, as text and as JSON.
    settings = load({"QUEUE_REDIS_URL": f"{redis_url}/1", "REDIS_URL": f"{redis_url}/0"})
    assert status.main(settings, []) == 0
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith(ids["failed"])]
    assert line.split()[1:3] == ["-", "app-queue"] and "ZeroDivisionError" in line
    assert status.main(settings, ["--json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    (failure,) = document["failures"]
    assert (failure["id"], failure["type"]) == (ids["failed"], None)
    (row,) = document["queues"]
    assert (row["waiting"]["default"], row["scheduled"], row["dead"]) == (1, 1, 1)
