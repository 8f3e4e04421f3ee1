"""MongoDB: job history through the real API and worker processes, bulk shipping, outages,
readiness, and the database handlers get as ctx.db."""

from __future__ import annotations

import base64
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pymongo
import pymongo.errors
import pytest
import redis
from prometheus_client import CollectorRegistry
from pymongo.database import Database

from service.config import constants
from service.config.settings import load
from service.dev.embedded_mongo import EmbeddedMongo
from service.dev.embedded_redis import free_port
from service.history import shipper
from service.jobs import registry
from service.worker.health import HealthServer
from service.worker.job_metrics import HistoryCollector
from service.worker.supervisor import Supervisor
from tests.conftest import TEST_MODULES, ServiceProcess, http, publish, wait_for

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
    assert failed["error"] == "service.dev.demo.JobFailed: boom"
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
    stats = http("GET", f"{worker.url}/ready")[2]["shipper"]
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
        WORKER_PROCESSES="2",
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
    assert http("GET", f"{worker.url}/ready")[2]["shipper"]["dropped"] == 0


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
    status, headers, body = http("GET", f"{bare.url}/jobs")
    assert status == 405 and body["error"]["code"] == "history_disabled"
    assert headers["allow"] == "POST"
    job_id = post(bare, {"type": "test.db", "payload": {"key": "note-2"}})
    failed = wait_for(
        lambda: (v := http("GET", f"{bare.url}/jobs/{job_id}")[2])["status"] == "failed" and v
    )
    assert failed["error"].startswith(
        "service.jobs.context.MongoNotConfigured: job type 'test.db' needs"
    )


def test_update_for_caps_payloads_and_maps_statuses() -> None:
    big = orjson.dumps({"blob": "x" * (constants.HISTORY_PAYLOAD_MAX + 10)})
    data = b'["echo",null,[' + big + b"],{}]"
    fields = {b"id": b"j1", b"status": b"queued", b"type": b"echo", b"queue": b"q", b"data": data}
    update = shipper.update_for(b"1700000000000-0", fields)
    changes = update._doc["$set"]
    assert changes["payload"] == {"truncated": True, "bytes": len(big)}
    assert (changes["status"], changes["type"], changes["queue"]) == ("queued", "echo", "q")
    assert changes["updated_at"].year == 2023
    dead = shipper.update_for(b"1700000000001-0", {b"id": b"j1", b"status": b"dead"})
    assert dead._doc["$set"]["status"] == "failed"


# --- jobs published while no worker runs -------------------------------------------------------
def test_a_job_published_before_any_worker_reaches_the_history_whole(
    start_service: Start,
    mongo_uri: str,
    redis_url: str,
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
) -> None:
    # Given the API with MONGODB_URI, and no worker yet
    api = start_service(MONGODB_URI=mongo_uri)
    job_id = post(api, {"type": "echo", "payload": {"n": 7}})
    assert queue_redis.xlen(constants.HISTORY_STREAM) == 1  # recorded, waiting for a shipper
    # When a worker with MONGODB_URI starts only then
    start_service(worker=True, WORKER_CONCURRENCY="1", MONGODB_URI=mongo_uri)
    # Then the job runs and its history is whole: listed by type, with its queue and payload
    jobs_collection = mongo_db["jobs"]
    wait_for(lambda: events_of(jobs_collection, job_id) == ["queued", "started", "finished"], 15)
    listed = http("GET", f"{api.url}/jobs?type=echo")[2]["jobs"]
    assert [(j["id"], j["queue"], j["status"]) for j in listed] == [
        (job_id, "app-queue", "finished")
    ]
    record = jobs_collection.find_one({"_id": job_id})
    assert record is not None and record["payload"] == {"n": 7} and record["result"] == {"n": 7}


def test_the_api_keeps_recording_on_and_the_scripts_bound_the_stream(
    start_service: Start, mongo_uri: str, redis_url: str, queue_redis: redis.Redis
) -> None:
    api = start_service(MONGODB_URI=mongo_uri, WORKER_PROCESSING_INTERVAL="1000")
    # The API renews the key as a shipper does (TTL: three intervals and a second)
    assert 0 < queue_redis.ttl(constants.HISTORY_ON_KEY) <= shipper.on_ttl(1.0)
    queue_redis.delete(constants.HISTORY_ON_KEY)
    wait_for(lambda: queue_redis.exists(constants.HISTORY_ON_KEY), 3)
    # Given a stream one event short of its bound (no shipper has run for a long time)
    fill = "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'id', i) end"
    queue_redis.eval(fill, 1, constants.HISTORY_STREAM, constants.HISTORY_BUFFER_MAX - 1)
    first = queue_redis.xrange(constants.HISTORY_STREAM, count=3)
    # When three more events are recorded
    status, _, body = http("POST", f"{api.url}/jobs/batch", {"jobs": [{"type": "noop"}] * 3})
    assert status == 202
    # Then the stream stays at its bound: the two oldest are dropped and counted
    assert queue_redis.xlen(constants.HISTORY_STREAM) == constants.HISTORY_BUFFER_MAX
    assert queue_redis.get(constants.HISTORY_DROPPED_KEY) == b"2"
    assert queue_redis.xrange(constants.HISTORY_STREAM, count=1)[0][0] == first[2][0]
    newest = queue_redis.xrevrange(constants.HISTORY_STREAM, count=3)
    assert {f[b"id"].decode() for _, f in newest} == {j["id"] for j in body["jobs"]}


# --- events MongoDB cannot store -------------------------------------------------------------
# Events written straight into the stream, as another tool could.
FOREIGN_EVENTS: list[dict[bytes, bytes]] = [
    # a payload BSON cannot hold (beyond 64 bits)
    {b"id": b"wide", b"status": b"queued", b"type": b"echo", b"queue": b"app-queue",
     b"data": b'["echo",null,[{"n":18446744073709551615}],{}]'},
    # a result with a NUL in a key (BSON refuses it)
    {b"id": b"nul", b"status": b"finished", b"result": base64.b64encode(b'{"a\\u0000b":1}')},
    # data that is not JSON, an error that is not base64, numbers that are not (or too large)
    {b"id": b"garbled", b"status": b"dead", b"type": b"echo", b"queue": b"app-queue",
     b"data": b"\x80 not json", b"error": b"!!", b"attempt": b"9" * 30, b"run_at": b"1e300",
     b"t0": b"x", b"t1": b"1"},
    # no job id: nothing to store
    {b"status": b"queued"},
]  # fmt: skip


def test_events_mongodb_cannot_store_never_stop_the_shipper(
    start_service: Start,
    mongo_uri: str,
    redis_url: str,
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
) -> None:
    api = start_service(MONGODB_URI=mongo_uri)
    worker = start_service(
        worker=True,
        WORKER_CONCURRENCY="1",
        WORKER_PROCESSING_INTERVAL="1000",
        MONGODB_URI=mongo_uri,
    )
    # Given events BSON cannot hold, or that do not decode, among the others
    for fields in FOREIGN_EVENTS:
        queue_redis.xadd(constants.HISTORY_STREAM, fields)  # type: ignore[arg-type]
    wide = publish(redis_url, "echo", {"n": 2**63})  # published by another tool, it runs
    # Then the events after them still reach MongoDB
    job_id = post(api, {"type": "echo", "payload": {"n": 1}})
    jobs_collection = mongo_db["jobs"]
    wait_for(lambda: events_of(jobs_collection, job_id) == ["queued", "started", "finished"], 15)
    wait_for(lambda: events_of(jobs_collection, wide)[-1:] == ["finished"], 15)

    # And the unstorable ones are stored without the part MongoDB refused
    def doc(job: str) -> dict[str, Any]:
        found = jobs_collection.find_one({"_id": job})
        assert found is not None
        return found

    overflow = {"unstorable": "OverflowError: MongoDB can only handle up to 8-byte ints"}
    assert (doc("wide")["type"], doc("wide")["queue"]) == ("echo", "app-queue")
    assert doc("wide")["payload"] == overflow
    assert doc("nul")["status"] == "finished"
    assert doc("nul")["result"]["unstorable"].startswith("InvalidDocument: ")
    garbled = doc("garbled")
    assert (garbled["status"], garbled["type"]) == ("failed", "echo")
    assert garbled["payload"]["unstorable"].startswith("does not decode: ")
    assert garbled["error"]["unstorable"].startswith("does not decode: ")
    assert "attempts" not in garbled
    assert doc(wide)["payload"] == doc(wide)["result"] == overflow
    assert doc(wide)["status"] == "finished" and doc(wide)["type"] == "echo"
    # counted, ready, and logged once per cause
    status, _, ready = http("GET", f"{worker.url}/ready")
    assert status == 200 and ready["history"] == "ok"
    assert (ready["shipper"]["stored_in_part"], ready["shipper"]["unstorable"]) == (5, 1)
    exposition = urllib.request.urlopen(f"{worker.url}/metrics", timeout=5).read().decode()
    assert 'service_history_unstorable_events_total{outcome="stored_in_part"} 5.0' in exposition
    assert 'service_history_unstorable_events_total{outcome="dropped"} 1.0' in exposition
    assert "service_history_shipper_up 1.0" in exposition
    logged = [line for line in worker.output.splitlines() if "cannot store an event" in line]
    causes = ("OverflowError", "InvalidDocument", "does not decode", "unreadable")
    assert len(logged) == len(causes)
    assert all(any(f"({cause}" in line for line in logged) for cause in causes)
    assert queue_redis.xlen(constants.HISTORY_STREAM) == 0


class RefusingCollection:
    """A real collection behind an ordered bulk_write that refuses, as MongoDB refuses a
    document it cannot store, every update whose payload has a key starting with `$`; and
    that is unavailable for the calls numbered in `down`."""

    def __init__(self, real: Any, down: tuple[int, ...] = ()) -> None:
        self.real = real
        self.down = down
        self.calls = 0

    def bulk_write(self, updates: list[pymongo.UpdateOne]) -> Any:
        self.calls += 1
        if self.calls in self.down:
            raise pymongo.errors.AutoReconnect("connection refused")
        for index, update in enumerate(updates):
            payload = update._doc["$set"].get("payload")
            if isinstance(payload, dict) and any(k.startswith("$") for k in payload):
                if index:
                    self.real.bulk_write(updates[:index])
                error = {"index": index, "code": 52, "errmsg": "field names may not start with $"}
                raise pymongo.errors.BulkWriteError({"writeErrors": [error]})
        return self.real.bulk_write(updates)


def published(job_id: str, payload: Any) -> dict[bytes, bytes]:
    data = orjson.dumps(["echo", None, [payload], {}])
    return {b"id": job_id.encode(), b"status": b"queued", b"type": b"echo", b"data": data}


@pytest.mark.parametrize(
    ("down", "calls"), [((), 5), ((3,), 8)], ids=["mongodb-up", "mongodb-down-midway"]
)
def test_a_refused_event_is_stored_in_part_and_holds_up_none_of_the_others(
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
    down: tuple[int, ...],
    calls: int,
) -> None:
    running = shipper.Shipper(queue_redis, mongo_db, "test", batch=10, interval=1.0)
    collection = running.collection = RefusingCollection(mongo_db["jobs"], down)  # type: ignore[assignment]
    for job_id, payload in (("a", {}), ("b", {"$where": 1}), ("c", {"n": 3}), ("d", {})):
        queue_redis.xadd(constants.HISTORY_STREAM, published(job_id, payload))  # type: ignore[arg-type]
    # a is written in the batch, which MongoDB refuses at b; then one at a time: b whole
    # (refused), b in part, c, d. Should MongoDB go down at b in part, the next round starts
    # again from b, and a is not written twice.
    while queue_redis.xlen(constants.HISTORY_STREAM):
        running.ship()
    assert collection.calls == calls
    jobs_collection = mongo_db["jobs"]
    assert {d["_id"]: len(d["events"]) for d in jobs_collection.find()} == dict.fromkeys("abcd", 1)
    refused = jobs_collection.find_one({"_id": "b"})
    assert refused is not None and refused["type"] == "echo"
    assert refused["payload"] == {
        "unstorable": "MongoDB error 52: field names may not start with $"
    }
    assert (running.stats.stored_in_part, running.stats.unstorable) == (1, 0)
    assert running.stats.mongo_ok


def test_the_shipper_survives_an_unexpected_error(
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = shipper.Shipper(queue_redis, mongo_db, "test", batch=10, interval=0.05)
    real = running.collection
    failures = iter([ZeroDivisionError("a bug"), KeyError("another")])

    class Surprising:
        def bulk_write(self, updates: list[pymongo.UpdateOne]) -> Any:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return real.bulk_write(updates)

    running.collection = Surprising()  # type: ignore[assignment]
    queue_redis.xadd(constants.HISTORY_STREAM, published("a", {}))  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: real.find_one({"_id": "a"}), 5)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
    failed = [r for r in caplog.records if "shipper failed" in r.getMessage()]
    assert [r.exc_info[0] for r in failed if r.exc_info] == [ZeroDivisionError, KeyError]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stopped_shipper_makes_ready_503_and_its_gauge_0(
    redis_url: str, mongo_uri: str, queue_redis: redis.Redis
) -> None:
    settings = load(
        {
            "QUEUE_REDIS_URL": f"{redis_url}/1",
            "REDIS_URL": f"{redis_url}/0",
            "MONGODB_URI": mongo_uri,
            "WORKER_CONCURRENCY": "1",
            "WORKER_PROCESSING_INTERVAL": "1000",
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
        }
    )
    supervisor = Supervisor(settings, registry.load(TEST_MODULES))
    supervisor.redis = queue_redis
    supervisor.slots[0].set_ready(True)  # its worker process consumes
    supervisor.history = supervisor._start_history()
    assert supervisor.shipper is not None
    gauge = CollectorRegistry()
    gauge.register(HistoryCollector(supervisor.history_figures))
    server = HealthServer(settings, supervisor.healthy, supervisor.ready, lambda: b"")
    server.start()
    url = f"http://127.0.0.1:{server.port}/ready"
    try:
        status, _, ready = http("GET", url)
        assert (status, ready["history"]) == (200, "ok")
        assert gauge.get_sample_value("service_history_shipper_up") == 1

        def dies(stop: threading.Event) -> None:
            raise SystemExit  # what no `except Exception` stops: the thread ends

        supervisor.shipper.step = dies  # type: ignore[method-assign]
        wait_for(lambda: not supervisor.history.is_alive(), 5)  # type: ignore[union-attr]
        status, _, ready = http("GET", url)
        assert (status, ready["status"], ready["history"]) == (503, "unavailable", "stopped")
        assert ready["mongodb"] == "ok" and ready["redis"] == "ok"
        assert gauge.get_sample_value("service_history_shipper_up") == 0
    finally:
        server.stop()
        supervisor.shipper.redis.close()
        if supervisor.db is not None:
            supervisor.db.client.close()
        supervisor._wakeup_read.close()
        supervisor._wakeup_write.close()


def test_update_for_stores_what_it_can_of_an_event() -> None:
    def changes(fields: dict[bytes, bytes], refused: dict[str, str] | None = None) -> Any:
        spoiled: list[str] = []
        update = shipper.update_for(b"1700000000000-0", fields, refused, spoiled)
        return update._doc["$set"], update._doc["$push"]["events"], spoiled

    wide, _, spoiled = changes(FOREIGN_EVENTS[0])
    assert (wide["type"], wide["queue"], wide["status"]) == ("echo", "app-queue", "queued")
    assert wide["payload"] == {"unstorable": spoiled[0]}
    assert spoiled == ["OverflowError: MongoDB can only handle up to 8-byte ints"]
    nul, _, spoiled = changes(FOREIGN_EVENTS[1])
    assert nul["result"] == {"unstorable": spoiled[0]} and spoiled[0].startswith("InvalidDocument")
    garbled, event, spoiled = changes(FOREIGN_EVENTS[2])
    assert len(spoiled) == 2 and all(s.startswith("does not decode: ") for s in spoiled)
    assert "attempts" not in garbled and "attempt" not in event and event["event"] == "dead"
    assert "run_at" not in garbled and "duration" not in event
    with pytest.raises(shipper.UnreadableEvent):
        changes(FOREIGN_EVENTS[3])
    # A part MongoDB refused, named by the shipper; one that decodes and fits is kept as it is
    fine = published("j", {"n": 2**63 - 1, "s": "\u0000 in a value is fine"})
    assert changes(fine)[0]["payload"] == {"n": 2**63 - 1, "s": "\u0000 in a value is fine"}
    refused, _, spoiled = changes(fine, {"payload": "MongoDB error 52: no"})
    assert refused["payload"] == {"unstorable": "MongoDB error 52: no"}
    assert spoiled == ["MongoDB error 52: no"]


def test_the_shipper_reports_the_events_the_scripts_dropped(
    queue_redis: redis.Redis,
    mongo_db: Database[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.history.shipper")
    queue_redis.set(constants.HISTORY_DROPPED_KEY, 5)  # before this shipper started
    running = shipper.Shipper(queue_redis, mongo_db, "test", batch=10, interval=0.05)
    running.step(threading.Event())
    assert running.stats.dropped == 0
    queue_redis.incrby(constants.HISTORY_DROPPED_KEY, 3)
    running.step(threading.Event())
    assert running.stats.dropped == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "service.history.shipper"]
    assert "job history: 5 events dropped so far, the stream being full" in messages
    assert "job history: the stream is full; its 3 oldest events dropped" in messages
