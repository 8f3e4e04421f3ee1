"""MongoDB: job history through the real API and worker processes, bulk shipping, outages,
readiness, and the database handlers get as ctx.db."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pymongo
import pytest
import redis
from pymongo.database import Database

from service import constants, history
from service.embedded_mongo import EmbeddedMongo

from .conftest import ServiceProcess, http, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., ServiceProcess]


@pytest.fixture
def mongo_db(mongo_uri: str) -> Iterator[Database[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    yield client.get_default_database()
    client.close()


def post(api: ServiceProcess, body: dict[str, Any]) -> str:
    status, _, response = http("POST", f"{api.url}/jobs", body)
    assert status == 202, response
    return str(response["id"])


def events_of(jobs_collection: Any, job_id: str) -> list[str]:
    doc = jobs_collection.find_one({"_id": job_id}) or {}
    return [e["event"] for e in doc.get("events", [])]


def test_every_state_change_lands_in_history(
    start_service: Start,
    mongo_uri: str,
    redis_url: str,
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
) -> None:
    api = start_service(MONGODB_URI=mongo_uri)
    start_service(
        worker=True,
        WORKER_CONCURRENCY="1",
        WORKER_PROCESSING_INTERVAL="1000",
        MONGODB_URI=mongo_uri,
    )
    wait_for(lambda: queue_redis.exists(constants.HISTORY_ON_KEY))
    done = post(api, {"type": "echo", "payload": {"n": 1}})
    flaky = post(
        api,
        {
            "type": "test.flaky",
            "payload": {"fail_times": 1},
            "backoff": {"type": "fixed", "base": 0},
        },
    )
    dead = post(api, {"type": "fail", "payload": {"message": "boom"}})
    later = post(api, {"type": "echo", "payload": {}, "delay": 60})
    assert http("DELETE", f"{api.url}/jobs/{later}")[0] == 200
    jobs_collection = mongo_db["jobs"]
    expected = {
        done: ["queued", "started", "finished"],
        flaky: ["queued", "started", "retried", "started", "finished"],
        dead: ["queued", "started", "dead"],
        later: ["scheduled", "canceled"],
    }
    wait_for(lambda: all(events_of(jobs_collection, i) == e for i, e in expected.items()), 15)
    record = jobs_collection.find_one({"_id": done})
    assert record is not None
    assert (record["type"], record["queue"], record["status"]) == ("echo", "app-queue", "finished")
    assert record["payload"] == {"n": 1} and record["result"] == {"n": 1}
    assert record["attempts"] == 1 and record["worker"]
    assert record["events"][-1]["duration"] >= 0
    failed = jobs_collection.find_one({"_id": dead})
    assert failed is not None and failed["status"] == "failed"
    assert failed["error"] == "service.handlers.JobFailed: boom"
    assert failed["events"][-1]["reason"] == "exception"

    # GET /jobs lists the history, filtered and paginated
    status, _, listed = http("GET", f"{api.url}/jobs?status=finished&limit=1")
    assert status == 200 and len(listed["jobs"]) == 1 and listed["next_cursor"]
    status, _, rest = http("GET", f"{api.url}/jobs?status=finished&cursor={listed['next_cursor']}")
    assert {j["id"] for j in listed["jobs"] + rest["jobs"]} == {done, flaky}
    assert [j["id"] for j in http("GET", f"{api.url}/jobs?type=fail")[2]["jobs"]] == [dead]
    assert http("GET", f"{api.url}/jobs?status=lost")[0] == 422

    # GET /jobs/{id} falls back to history once Redis has let the job go
    queue_redis.delete(constants.job_key(done), constants.result_key(done))
    status, _, remembered = http("GET", f"{api.url}/jobs/{done}")
    assert status == 200 and remembered["source"] == "history"
    assert remembered["status"] == "finished" and remembered["result"] == {"n": 1}


def test_bulk_writes_follow_batch_size_and_interval(
    start_service: Start,
    mongo_uri: str,
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
) -> None:
    api = start_service(MONGODB_URI=mongo_uri)
    worker = start_service(
        worker=True,
        WORKER_CONCURRENCY="1",
        WORKER_BATCH_SIZE="7",
        WORKER_PROCESSING_INTERVAL="1000",
        MONGODB_URI=mongo_uri,
    )
    wait_for(lambda: queue_redis.exists(constants.HISTORY_ON_KEY))
    status, _, body = http("POST", f"{api.url}/jobs/batch", {"jobs": [{"type": "noop"}] * 40})
    assert status == 202
    ids = [j["id"] for j in body["jobs"]]
    jobs_collection = mongo_db["jobs"]
    wait_for(lambda: jobs_collection.count_documents({"status": "finished"}) == 40, 20)
    stats = http("GET", f"{worker.url}/ready")[2]["history"]
    assert stats["largest_flush"] == 7  # never more than WORKER_BATCH_SIZE per bulk_write
    assert stats["shipped"] >= 120 and stats["flushes"] >= 120 / 7
    # a lone event is shipped within one WORKER_PROCESSING_INTERVAL
    job_id = post(api, {"type": "noop"})
    wait_for(lambda: events_of(jobs_collection, job_id)[-1:] == ["finished"], timeout=1.5)
    assert set(ids) <= {d["_id"] for d in jobs_collection.find({}, {"_id": 1})}


def test_mongodb_outage_never_stops_jobs_and_history_catches_up(
    start_service: Start,
    mongo_uri: str,
    mongo_server: EmbeddedMongo,
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
) -> None:
    api = start_service(MONGODB_URI=mongo_uri)
    worker = start_service(
        worker=True,
        WORKER_CONCURRENCY="2",
        WORKER_PROCESSING_INTERVAL="1000",
        MONGODB_URI=mongo_uri,
    )
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200)
    # Given MongoDB goes down mid-run
    mongo_server.stop()
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 503, 10)
    wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 503, 10)
    # Jobs still run
    ids = [post(api, {"type": "echo", "payload": {"n": n}}) for n in range(20)]
    wait_for(
        lambda: all(http("GET", f"{api.url}/jobs/{i}")[2]["status"] == "finished" for i in ids), 15
    )
    assert queue_redis.xlen(constants.HISTORY_STREAM) >= 60  # waiting, not lost
    # When it comes back, readiness returns and the history catches up
    mongo_server.start()
    wait_for(lambda: http("GET", f"{worker.url}/ready")[0] == 200, 15)
    wait_for(lambda: http("GET", f"{api.url}/ready")[0] == 200, 15)
    jobs_collection = mongo_db["jobs"]
    wait_for(
        lambda: jobs_collection.count_documents({"_id": {"$in": ids}, "status": "finished"}) == 20,
        20,
    )
    assert http("GET", f"{worker.url}/ready")[2]["history"]["dropped"] == 0


def test_handlers_get_the_database_through_their_context(
    start_service: Start, mongo_uri: str, mongo_db: Database[dict[str, Any]]
) -> None:
    # With MONGODB_URI, a handler writes application data through ctx.db
    api = start_service(MONGODB_URI=mongo_uri)
    start_service(worker=True, WORKER_CONCURRENCY="1", MONGODB_URI=mongo_uri)
    job_id = post(api, {"type": "test.db", "payload": {"key": "note-1"}})
    wait_for(lambda: http("GET", f"{api.url}/jobs/{job_id}")[2]["status"] == "finished")
    assert mongo_db["notes"].find_one({"key": "note-1"})["job"] == job_id


def test_without_mongodb_history_is_off_and_ctx_db_fails_clearly(start_service: Start) -> None:
    bare = start_service()
    start_service(worker=True, WORKER_CONCURRENCY="1")
    status, _, body = http("GET", f"{bare.url}/jobs")
    assert status == 501 and body["error"]["code"] == "history_disabled"
    job_id = post(bare, {"type": "test.db", "payload": {"key": "note-2"}})
    failed = wait_for(
        lambda: (v := http("GET", f"{bare.url}/jobs/{job_id}")[2])["status"] == "failed" and v
    )
    assert failed["error"].startswith(
        "service.context.MongoNotConfigured: job type 'test.db' needs"
    )


def test_update_for_caps_payloads_and_maps_statuses() -> None:
    big = orjson.dumps({"blob": "x" * (constants.HISTORY_PAYLOAD_MAX + 10)})
    data = b'["echo",null,[' + big + b"],{}]"
    update = history.update_for(
        b"1700000000000-0", {b"id": b"j1", b"status": b"queued", b"queue": b"q", b"data": data}
    )
    changes = update._doc["$set"]
    assert changes["payload"] == {"truncated": True, "bytes": len(big)}
    assert (changes["status"], changes["type"], changes["queue"]) == ("queued", "echo", "q")
    assert changes["updated_at"].year == 2023
    dead = history.update_for(b"1700000000001-0", {b"id": b"j1", b"status": b"dead"})
    assert dead._doc["$set"]["status"] == "failed"
