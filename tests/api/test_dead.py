"""The dead-letter queue API, on real failed jobs: one worker process makes them once per module.

Read-only tests share the module's dead jobs (`dead`). Tests that change the queue either work
on jobs of their own (made by the same worker) or on a copy of the module's dead jobs in another
database that no worker serves (`parked`), where retried jobs stay put to be inspected.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from starlette.testclient import TestClient

from service.api.app import create_app
from service.api.openapi import build_openapi
from service.config import constants
from service.config.settings import load
from service.dev.embedded_redis import EmbeddedRedis, free_port
from service.jobs import registry
from service.jobs.records import NewJob, new_id, utc_iso
from service.store.publisher import Store
from tests.conftest import TEST_MODULES, ServiceProcess, base_env, publish, wait_for

pytestmark = pytest.mark.slow

QUEUE_DB = 1  # the worker's queue database, as base_env sets it
PARKED_DB = 5  # a copy of the dead jobs that no worker serves
WORKER_QUEUES = "app-queue,other,bulk"


@dataclass
class Dead:
    server: str
    queue_redis: redis.Redis
    app_redis: redis.Redis
    client: TestClient
    ids: dict[str, str]  # role -> id of the module's dead jobs
    booms: list[str]  # the `fail` jobs on app-queue

    @property
    def all_ids(self) -> set[str]:
        return set(self.ids.values()) | set(self.booms)


def make_client(server: str, db: int = QUEUE_DB, **env: str) -> TestClient:
    settings = load({"QUEUE_REDIS_URL": f"{server}/{db}", "REDIS_URL": f"{server}/0", **env})
    return TestClient(
        create_app(settings, registry.load(TEST_MODULES)), raise_server_exceptions=False
    )


def publish_many(server: str, jobs: list[NewJob]) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(f"{server}/{QUEUE_DB}")
        await Store(client).publish(jobs)
        await client.aclose()

    asyncio.run(run())


def status_of(queue_redis: redis.Redis, job_id: str) -> str | None:
    value = queue_redis.hget(constants.job_key(job_id), "status")
    return value.decode() if value else None


def wait_dead(queue_redis: redis.Redis, *ids: str) -> None:
    wait_for(lambda: all(status_of(queue_redis, i) == "failed" for i in ids), timeout=20)


def listing(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of GET /dead, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/dead", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["jobs"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def ids_of(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def follow(send: Callable[[str | None], Any]) -> list[dict[str, Any]]:
    """Every answer of a bulk action, sent again with each `next_cursor` until it is null."""
    answers: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = send(cursor)
        assert response.status_code == 200, response.text
        answers.append(response.json())
        cursor = answers[-1]["next_cursor"]
        if cursor is None:
            return answers


def fabricate_dead(client: redis.Redis, count: int, queue: str = "app-queue") -> list[str]:
    """`count` dead jobs written straight into Redis, as a worker leaves them (quicker than
    failing them through one)."""
    now = time.time()
    ids = [new_id() for _ in range(count)]
    with client.pipeline(transaction=False) as pipe:
        for n, job_id in enumerate(ids):
            fields = {
                "status": "failed",
                "origin": queue,
                "data": orjson.dumps(["fail", None, [{"message": "made"}], {}]),
                "ended_at": utc_iso(now - n),
                "attempts": 1,
            }
            pipe.hset(constants.job_key(job_id), mapping=fields)
            pipe.zadd(constants.registry_key("failed", queue), {job_id: now - n + 3600})
        pipe.sadd(constants.QUEUES_KEY, constants.queue_key(queue))
        pipe.execute()
    return ids


def error_fields(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameters"
    return {e["field"] for e in error["details"]["errors"]}


@pytest.fixture(scope="module")
def dead(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dead]:
    """Given dead jobs of every kind, made by a real worker: exceptions on two queues, unknown
    types, a job that killed its worker (MAX_CRASHES=1) and one past its timeout."""
    queue_redis = redis.Redis.from_url(f"{redis_server}/{QUEUE_DB}")
    app_redis = redis.Redis.from_url(f"{redis_server}/0")
    queue_redis.flushall()
    booms = [publish(redis_server, "fail", {"message": f"boom {n}"}) for n in range(6)]
    ids = {
        "disk": publish(redis_server, "fail", {"message": "Disk FULL on /var"}),
        "welcome": publish(redis_server, "email.welcome", {"to": "a@example.com"}),
        "digest": publish(redis_server, "email.digest", {}),
        "slow": publish(redis_server, "test.slow", {"key": "slow"}, timeout=1),
        "crash": publish(redis_server, "test.crash", {"key": "crashes"}, max_retries=10),
        "other": publish(redis_server, "fail", {"message": "boom elsewhere"}, queue="other"),
    }
    env = base_env(
        redis_server,
        WORKER_MODE="true",
        PORT=str(free_port()),
        WORKER_CONCURRENCY="1",
        MAX_CRASHES="1",
        WORKER_QUEUES=WORKER_QUEUES,
    )
    worker = ServiceProcess(env, log=tmp_path_factory.mktemp("dead") / "worker.log")
    try:
        worker.wait_healthy()
        wait_dead(queue_redis, *booms, *ids.values())
        with make_client(redis_server) as client:
            yield Dead(redis_server, queue_redis, app_redis, client, ids, booms)
    finally:
        worker.stop()
        queue_redis.close()
        app_redis.close()


@pytest.fixture
def parked(dead: Dead) -> Iterator[tuple[TestClient, redis.Redis]]:
    """The module's dead jobs copied (hash, history, registry entry, TTLs) to a database that
    no worker serves, with a client of the API on it."""
    target = redis.Redis.from_url(f"{dead.server}/{PARKED_DB}")
    target.flushdb()
    for job_id in dead.all_ids:
        for key in (constants.job_key(job_id), constants.result_key(job_id)):
            assert dead.queue_redis.copy(key, key, destination_db=PARKED_DB)
        queue = dead.queue_redis.hget(constants.job_key(job_id), "origin")
        assert queue
        registry_key = constants.registry_key("failed", queue.decode())
        score = dead.queue_redis.zscore(registry_key, job_id)
        assert score
        target.zadd(registry_key, {job_id: score})
        target.sadd(constants.QUEUES_KEY, constants.queue_key(queue.decode()))
    with make_client(dead.server, PARKED_DB) as client:
        yield client, target
    target.close()


# --- GET /dead ---------------------------------------------------------------------------------
def test_lists_every_kind_of_dead_job_with_its_reason_and_error(dead: Dead) -> None:
    items = {item["id"]: item for item in listing(dead.client, limit=500)}
    assert dead.all_ids <= set(items)

    boom = items[dead.booms[3]]
    assert boom["type"] == "fail" and boom["queue"] == "app-queue"
    assert boom["reason"] == "exception" and boom["error"].endswith("JobFailed: boom 3")
    assert boom["payload"] == {"message": "boom 3"}
    assert (boom["attempts"], boom["crashes"]) == (1, 0)
    ended_at = dead.queue_redis.hget(constants.job_key(dead.booms[3]), "ended_at")
    assert ended_at and boom["failed_at"] == ended_at.decode()
    assert boom["expires_at"] > boom["failed_at"]

    crash = items[dead.ids["crash"]]
    assert crash["reason"] == "worker_lost" and crash["crashes"] == 1
    assert crash["error"].startswith("WorkerLost: ")
    assert items[dead.ids["slow"]]["reason"] == "timeout"
    assert items[dead.ids["slow"]]["error"].startswith("JobTimeout: ")
    assert items[dead.ids["welcome"]]["error"].startswith("UnknownJobType: ")
    assert items[dead.ids["other"]]["queue"] == "other"  # a queue only Redis knows of


def test_newest_failure_first_and_pages_follow_one_another(dead: Dead) -> None:
    whole = dead.client.get("/dead", params={"limit": 500}).json()
    assert whole["next_cursor"] is None
    failed_at = [item["failed_at"] for item in whole["jobs"]]
    assert failed_at == sorted(failed_at, reverse=True)

    pages = []
    cursor = None
    while True:
        body = dead.client.get(
            "/dead", params={"limit": 4, **({"cursor": cursor} if cursor else {})}
        )
        pages.append(ids_of(body.json()["jobs"]))
        cursor = body.json()["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in pages[:-1]] == [4] * (len(pages) - 1)
    assert len(pages) == -(-len(whole["jobs"]) // 4) >= 3
    assert [i for page in pages for i in page] == ids_of(whole["jobs"])
    # A page that ends at the very end says so when the registries are read to their end
    exact = dead.client.get("/dead", params={"limit": len(whole["jobs"])}).json()
    assert ids_of(exact["jobs"]) == ids_of(whole["jobs"]) and exact["next_cursor"] is None


def test_default_limit_is_50(dead: Dead) -> None:
    extra = [NewJob(new_id(), "fail", "bulk", {"message": "many"}, 180, 0) for _ in range(60)]
    publish_many(dead.server, extra)
    wait_dead(dead.queue_redis, *(job.id for job in extra))
    try:
        body = dead.client.get("/dead", params={"queue": "bulk"}).json()
        assert len(body["jobs"]) == 50 and body["next_cursor"]
    finally:
        assert dead.client.delete("/dead", params={"queue": "bulk"}).json()["count"] == 60


@pytest.mark.parametrize(
    ("params", "roles"),
    [
        ({"type": "email.welcome"}, {"welcome"}),
        ({"type": "email.*"}, {"welcome", "digest"}),
        ({"type": "test.*"}, {"slow", "crash"}),
        ({"queue": "other"}, {"other"}),
        ({"error": "disk full"}, {"disk"}),
        ({"error": "BOOM ELSEWHERE"}, {"other"}),
        ({"error": "workerlost", "type": "test.*"}, {"crash"}),
        ({"type": "email.*", "queue": "other"}, set()),
        ({"queue": "nowhere"}, set()),
    ],
)
def test_filters(dead: Dead, params: dict[str, str], roles: set[str]) -> None:
    found = set(ids_of(listing(dead.client, **params))) & dead.all_ids
    assert found == {dead.ids[role] for role in roles}


def test_type_prefix_and_error_filters_over_the_booms(dead: Dead) -> None:
    found = ids_of(listing(dead.client, type="fail", error="boom ", queue="app-queue"))
    assert set(found) == set(dead.booms)


def test_since_and_until_are_inclusive_and_take_any_offset(dead: Dead) -> None:
    items = [i for i in listing(dead.client, limit=500) if i["id"] in dead.all_ids]
    times = sorted({datetime.fromisoformat(i["failed_at"]) for i in items})
    low, high = times[1], times[-2]
    expected = {i["id"] for i in items if low <= datetime.fromisoformat(i["failed_at"]) <= high}
    plus_two = timezone(timedelta(hours=2))
    since = low.isoformat().replace("+00:00", "Z")
    until = high.astimezone(plus_two).isoformat()  # ...T12:00:00.123456+02:00
    assert set(ids_of(listing(dead.client, since=since, until=until))) == expected
    assert 0 < len(expected) < len(items)
    # A '+' sent unencoded in the query string arrives as a space, and still means '+'.
    response = dead.client.get(f"/dead?limit=500&since={since}&until={until}")
    assert set(ids_of(response.json()["jobs"])) == expected


def test_a_sparse_filter_hands_back_a_cursor_when_its_budget_is_spent(
    dead: Dead, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "DEAD_LIST_BUDGET", 3)
    first = dead.client.get("/dead", params={"type": "email.digest"}).json()
    assert first["next_cursor"]  # stopped after 3 entries, found nothing or one, more to see
    assert ids_of(listing(dead.client, type="email.digest")) == [dead.ids["digest"]]


def test_ties_in_the_registry_page_correctly(
    parked: tuple[TestClient, redis.Redis], dead: Dead, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every dead job with one registry score (as when one batch fails together),
    # read two registry entries at a time
    client, target = parked
    target.zadd(constants.registry_key("failed", "app-queue"), dict.fromkeys(dead.booms, 2e9))
    monkeypatch.setattr(constants, "DEAD_REGISTRY_PAGE", 2)
    whole = ids_of(listing(client, limit=500, type="fail", queue="app-queue"))
    # When it is read one job per page, then Then each job comes once, in the same order
    assert ids_of(listing(client, limit=1, type="fail", queue="app-queue")) == whole
    assert whole[: len(dead.booms)] == sorted(dead.booms, reverse=True)


def test_queues_are_merged_into_one_order(
    parked: tuple[TestClient, redis.Redis], dead: Dead, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the other queue's dead job between app-queue's in time, and registries read two
    # entries at a time (so app-queue's is read in several pages)
    client, target = parked
    app_queue = constants.registry_key("failed", "app-queue")
    members = [m.decode() for m in target.zrange(app_queue, 0, -1)]
    scores = {job_id: 2e9 + 2 * n for n, job_id in enumerate(members)}
    target.zadd(app_queue, scores)
    scores[dead.ids["other"]] = 2e9 + 5
    target.zadd(constants.registry_key("failed", "other"), {dead.ids["other"]: 2e9 + 5})
    monkeypatch.setattr(constants, "DEAD_REGISTRY_PAGE", 2)
    # When every dead job is listed, Then they come in one order, newest expiry first
    expected = sorted(scores, key=lambda job_id: scores[job_id], reverse=True)
    assert ids_of(listing(client, limit=3)) == expected


def test_foreign_and_vanished_entries_are_skipped_not_fatal(
    parked: tuple[TestClient, redis.Redis], dead: Dead
) -> None:
    # Given a job whose data RQ pickled, and a registry entry whose job expired
    client, target = parked
    pickled = dead.booms[0]
    target.hset(constants.job_key(pickled), "data", b"\x80\x05\x95pickle")
    target.zadd(constants.registry_key("failed", "app-queue"), {"f" * 32: 2e9})
    # When they are listed, Then the first shows without a type, the second not at all
    items = {item["id"]: item for item in listing(client, limit=500)}
    assert items[pickled]["type"] is None and items[pickled]["payload"] is None
    assert "f" * 32 not in items and len(items) == len(dead.all_ids)
    assert client.post(f"/dead/{'f' * 32}/retry").status_code == 404


def test_redis_down_is_503() -> None:
    with make_client(f"redis://127.0.0.1:{free_port()}") as client:
        response = client.get("/dead")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_unavailable"


def test_bad_parameters_are_422_each_named(dead: Dead) -> None:
    before = ids_of(listing(dead.client, limit=500))
    query = (
        "limit=0&since=yesterday&until=2026-11-29T10:00:00&type=em*il&cursor=zzz"
        "&queue=a/b&colour=red"
    )
    fields = error_fields(dead.client.get(f"/dead?{query}"))
    assert fields == {"limit", "since", "until", "type", "cursor", "queue", "colour"}
    for query in ["limit=501", "limit=ten", "type=a&type=b", "cursor=MTIz"]:
        assert dead.client.get(f"/dead?{query}").status_code == 422, query
    since_after_until = {"since": "2026-11-29T10:00:00Z", "until": "2026-11-29T09:00:00Z"}
    assert error_fields(dead.client.get("/dead", params=since_after_until)) == {"until"}
    assert error_fields(dead.client.delete("/dead")) == {"all"}
    assert error_fields(dead.client.delete("/dead", params={"all": "true", "type": "fail"})) == {
        "all"
    }
    assert error_fields(dead.client.delete("/dead", params={"all": "yes"})) == {"all"}
    assert error_fields(dead.client.delete("/dead", params={"since": "soon", "limit": 3})) == {
        "since",
        "limit",
    }
    assert ids_of(listing(dead.client, limit=500)) == before  # nothing changed


# --- Retry -------------------------------------------------------------------------------------
def test_retry_puts_the_job_back_as_new_keeping_its_history(
    parked: tuple[TestClient, redis.Redis], dead: Dead
) -> None:
    client, target = parked
    job_id = dead.ids["crash"]
    key = constants.job_key(job_id)
    history = target.xlen(constants.result_key(job_id))
    assert target.ttl(key) > 0 and target.hget(key, "crashes") == b"1"

    response = client.post(f"/dead/{job_id}/retry")

    assert response.status_code == 200
    assert response.json() == {"id": job_id, "queue": "app-queue", "status": "queued"}
    fields = target.hgetall(key)
    assert fields[b"status"] == b"queued" and fields[b"crashes"] == b"0"
    assert fields[b"retries_left"] == fields[b"max_retries"] == b"10"
    assert fields[b"enqueued_at"] > fields[b"created_at"] and b"ended_at" not in fields
    assert target.ttl(key) == -1 and target.ttl(constants.result_key(job_id)) == -1
    assert target.xlen(constants.result_key(job_id)) == history
    assert target.zscore(constants.registry_key("failed", "app-queue"), job_id) is None
    assert target.lrange(constants.queue_key("app-queue"), 0, -1) == [job_id.encode()]
    assert target.llen(constants.wake_key("app-queue")) == 1
    assert job_id not in ids_of(listing(client, limit=500))
    # Then it is no longer dead: a second retry is a 404
    second = client.post(f"/dead/{job_id}/retry")
    assert second.status_code == 404
    assert second.json()["error"]["code"] == "not_in_dead_letter_queue"


def test_a_retried_job_runs_again_with_fresh_retries(dead: Dead) -> None:
    # Given a job that fails 3 times, with one retry: it dies after 2 attempts
    job_id = publish(dead.server, "test.flaky", {"fail_times": 3}, max_retries=1)
    wait_dead(dead.queue_redis, job_id)
    # When it is retried from the dead-letter queue
    assert dead.client.post(f"/dead/{job_id}/retry").status_code == 200
    # Then it runs again, its retry is used again, and it succeeds on attempt 4
    wait_for(lambda: status_of(dead.queue_redis, job_id) == "finished")
    view = dead.client.get(f"/jobs/{job_id}").json()
    assert view["attempts"] == 4 and view["result"] == 4
    assert [h["outcome"] for h in view["history"]] == ["retried", "failed", "retried", "finished"]
    assert dead.app_redis.lrange(f"runs:{job_id}", 0, -1) == [b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize("job_id", ["f" * 32, "no:such", "a.b", "x" * 129])
def test_retry_or_delete_of_a_job_not_in_the_queue_is_404(dead: Dead, job_id: str) -> None:
    for method in ("POST", "DELETE"):
        path = f"/dead/{job_id}/retry" if method == "POST" else f"/dead/{job_id}"
        response = dead.client.request(method, path)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "not_in_dead_letter_queue"


def test_a_queued_job_is_not_dead(dead: Dead) -> None:
    job_id = publish(dead.server, "noop", queue="unserved")
    assert dead.client.post(f"/dead/{job_id}/retry").status_code == 404
    assert dead.client.delete(f"/dead/{job_id}").status_code == 404
    assert status_of(dead.queue_redis, job_id) == "queued"
    assert dead.queue_redis.lrange(constants.queue_key("unserved"), 0, -1) == [job_id.encode()]


def test_bulk_retry_dry_run_changes_nothing_then_retries_the_matches(
    parked: tuple[TestClient, redis.Redis], dead: Dead
) -> None:
    client, target = parked
    body = {"type": "email.*", "dry_run": True}
    before = ids_of(listing(client, limit=500))

    dry = client.post("/dead/retry", json=body)

    assert dry.status_code == 200
    expected = {dead.ids["welcome"], dead.ids["digest"]}
    assert dry.json()["dry_run"] is True and dry.json()["count"] == 2
    assert set(dry.json()["ids"]) == expected
    assert ids_of(listing(client, limit=500)) == before
    assert target.llen(constants.queue_key("app-queue")) == 0

    done = client.post("/dead/retry", json={**body, "dry_run": False})

    assert done.json() == {
        "dry_run": False,
        "count": 2,
        "examined": len(before),
        "next_cursor": None,
    }
    assert set(target.lrange(constants.queue_key("app-queue"), 0, -1)) == {
        i.encode() for i in expected
    }
    assert ids_of(listing(client, limit=500)) == [i for i in before if i not in expected]


def test_bulk_retry_of_every_dead_job_needs_all_true(
    parked: tuple[TestClient, redis.Redis],
) -> None:
    client, target = parked
    count = len(listing(client, limit=500))
    # No filter and no `all`: refused, as DELETE /dead without all=true is; nothing changes
    assert error_fields(client.post("/dead/retry", json={"dry_run": False})) == {"all"}
    everything = {"dry_run": False, "all": True}
    assert error_fields(client.post("/dead/retry", json={**everything, "type": "fail"})) == {"all"}
    assert error_fields(client.post("/dead/retry", json={"dry_run": False, "all": "yes"})) == {
        "all"
    }
    assert error_fields(client.post("/dead/retry", json={"dry_run": False, "all": False})) == {
        "all"
    }
    assert len(listing(client, limit=500)) == count
    # A dry run needs no `all`
    assert client.post("/dead/retry", json={"dry_run": True}).json()["count"] == count
    # With all: true, every dead job is retried
    assert client.post("/dead/retry", json=everything).json()["count"] == count
    assert listing(client) == []
    queued = target.llen(constants.queue_key("app-queue")) + target.llen(
        constants.queue_key("other")
    )
    assert queued == count


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"dry_run"}),
        ({"dry_run": "yes"}, {"dry_run"}),
        ({"dry_run": True, "since": "now", "type": 3, "extra": 1}, {"since", "type", "extra"}),
        ([1, 2], {"body"}),
    ],
)
def test_bulk_retry_body_errors_are_422(dead: Dead, body: Any, fields: set[str]) -> None:
    assert error_fields(dead.client.post("/dead/retry", json=body)) == fields


def test_bulk_actions_examine_a_budget_per_request_and_go_on_with_the_cursor(
    parked: tuple[TestClient, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every request may examine 3 registry entries, in pages of 2
    client, _ = parked
    everything = ids_of(listing(client, limit=500))
    failing = ids_of(listing(client, limit=500, type="fail"))
    monkeypatch.setattr(constants, "DEAD_LIST_BUDGET", 3)
    monkeypatch.setattr(constants, "DEAD_FIELDS_PAGE", 2)
    requests = -(-len(everything) // 3)

    def cursor_of(cursor: str | None) -> dict[str, str]:
        return {"cursor": cursor} if cursor else {}

    # When a dry run is followed to its end, Then each answer counts its own share, says how
    # many entries it examined, and the shares add up; nothing changes
    dry = follow(
        lambda cursor: client.post(
            "/dead/retry", json={"type": "fail", "dry_run": True, **cursor_of(cursor)}
        )
    )
    assert [answer["examined"] for answer in dry[:-1]] == [3] * (len(dry) - 1)
    assert sum(answer["examined"] for answer in dry) == len(everything)
    assert sum(answer["count"] for answer in dry) == len(failing)
    assert [job_id for answer in dry for job_id in answer["ids"]] == failing
    assert ids_of(listing(client, limit=500)) == everything
    # When a retry is followed, Then it retries the matches, a share per request
    retried = follow(
        lambda cursor: client.post(
            "/dead/retry", json={"type": "email.*", "dry_run": False, **cursor_of(cursor)}
        )
    )
    assert len(retried) == requests and sum(answer["count"] for answer in retried) == 2
    # When a delete is followed, Then it deletes the rest, a share per request
    deleted = follow(
        lambda cursor: client.delete("/dead", params={"all": "true", **cursor_of(cursor)})
    )
    assert all(answer["examined"] <= 3 for answer in deleted)
    assert sum(answer["count"] for answer in deleted) == len(everything) - 2
    assert listing(client) == []


def test_bulk_actions_refuse_a_cursor_they_did_not_give(dead: Dead) -> None:
    retry = {"dry_run": True, "cursor": "zzz"}
    for response, message in [
        (dead.client.post("/dead/retry", json=retry), "not a cursor this API returned"),
        (dead.client.post("/dead/retry", json={**retry, "cursor": 5}), "expected a string"),
        (dead.client.delete("/dead?type=fail&cursor=MTIz"), "not a cursor this API returned"),
    ]:
        assert error_fields(response) == {"cursor"}
        assert response.json()["error"]["details"]["errors"][0]["message"] == message


RETRY_ALL = b'{"dry_run": false, "all": true}'


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"DELETE /dead?all=true HTTP/1.1\r\nHost: test\r\n\r\n",
        b"POST /dead/retry HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(RETRY_ALL)}\r\n\r\n".encode()
        + RETRY_ALL,
    ],
    ids=["delete", "retry"],
)
def test_a_bulk_action_stops_when_its_client_goes_away(
    tmp_path: Path, request_bytes: bytes
) -> None:
    # Given 5000 dead jobs, which one request would retry or delete whole (within its budget),
    # and a real API process
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(f"{server.url}/1")
    api = None
    try:
        made = fabricate_dead(client, 5000)
        env = base_env(server.url, WORKER_MODE="false", PORT=str(free_port()))
        api = ServiceProcess(env, log=tmp_path / "api.log").wait_healthy()
        # When a client sends the request and hangs up at once
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(request_bytes)
        # Then the API stops between pages: it says so, and most jobs are still dead
        wait_for(lambda: "the client went away after" in api.output, timeout=30)
        done = len(made) - client.zcard(constants.registry_key("failed", "app-queue"))
        assert 0 < done < len(made) // 5, done
        assert done % constants.DEAD_FIELDS_PAGE == 0
    finally:
        if api is not None:
            api.stop()
        client.close()
        server.stop()


def test_bulk_retry_body_must_be_json(dead: Dead) -> None:
    plain = dead.client.post(
        "/dead/retry", content=b'{"dry_run": true}', headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 415
    broken = dead.client.post(
        "/dead/retry", content=b'{"dry_run": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400


def test_dry_run_lists_at_most_1000_ids_then_bulk_delete_removes_them_all(dead: Dead) -> None:
    # Given 1001 dead jobs on one queue
    many = [NewJob(new_id(), "fail", "bulk", {"message": "many"}, 180, 0) for _ in range(1001)]
    publish_many(dead.server, many)
    registry_key = constants.registry_key("failed", "bulk")
    wait_for(lambda: dead.queue_redis.zcard(registry_key) == 1001, timeout=30)
    # When they are counted, Then all are counted and 1000 listed
    dry = dead.client.post("/dead/retry", json={"queue": "bulk", "dry_run": True}).json()
    assert dry["count"] == 1001 and len(set(dry["ids"])) == 1000
    # When they are deleted, Then every hash, history and registry entry is gone
    assert dead.client.delete("/dead", params={"queue": "bulk"}).json()["count"] == 1001
    assert dead.queue_redis.zcard(registry_key) == 0
    keys = [constants.job_key(j.id) for j in many] + [constants.result_key(j.id) for j in many]
    assert dead.queue_redis.exists(*keys) == 0


# --- Delete ------------------------------------------------------------------------------------
def test_delete_removes_the_job_its_history_and_its_entry(dead: Dead) -> None:
    job_id = publish(dead.server, "fail", {"message": "delete me"})
    wait_dead(dead.queue_redis, job_id)
    assert dead.queue_redis.exists(constants.result_key(job_id)) == 1

    response = dead.client.delete(f"/dead/{job_id}")

    assert response.status_code == 204 and response.content == b""
    assert dead.queue_redis.exists(constants.job_key(job_id), constants.result_key(job_id)) == 0
    assert dead.queue_redis.zscore(constants.registry_key("failed", "app-queue"), job_id) is None
    assert dead.client.get(f"/jobs/{job_id}").status_code in (404, 410)
    assert dead.client.delete(f"/dead/{job_id}").status_code == 404


def test_delete_by_filter_and_all(parked: tuple[TestClient, redis.Redis], dead: Dead) -> None:
    client, target = parked
    everything = set(ids_of(listing(client, limit=500)))

    assert client.delete("/dead", params={"error": "disk"}).json()["count"] == 1
    assert target.exists(constants.job_key(dead.ids["disk"])) == 0
    assert set(ids_of(listing(client, limit=500))) == everything - {dead.ids["disk"]}

    assert client.delete("/dead", params={"all": "true"}).json()["count"] == len(everything) - 1
    assert listing(client) == []
    assert target.zcard(constants.registry_key("failed", "app-queue")) == 0
    assert target.keys("rq:job:*") == [] and target.keys("rq:results:*") == []


# --- Auth and OpenAPI --------------------------------------------------------------------------
def test_every_dead_letter_endpoint_needs_a_key(dead: Dead) -> None:
    before = ids_of(listing(dead.client, limit=500))
    job_id = dead.booms[0]
    calls = [
        ("GET", "/dead", None),
        ("DELETE", "/dead?all=true", None),
        ("POST", "/dead/retry", {"dry_run": False, "all": True}),
        ("POST", f"/dead/{job_id}/retry", None),
        ("DELETE", f"/dead/{job_id}", None),
    ]
    with make_client(dead.server, API_KEYS="secret") as client:
        for method, path, body in calls:
            response = client.request(method, path, json=body)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
        key = {"Authorization": "Bearer secret"}
        assert client.get("/dead", params={"limit": 500}, headers=key).status_code == 200
    assert ids_of(listing(dead.client, limit=500)) == before


def test_openapi_describes_the_dead_letter_routes(dead: Dead) -> None:
    paths = dead.client.get("/openapi.json").json()["paths"]
    assert set(paths["/dead"]) == {"get", "delete"}
    assert {p["name"] for p in paths["/dead"]["get"]["parameters"]} == {
        "type",
        "queue",
        "error",
        "since",
        "until",
        "limit",
        "cursor",
    }
    # DELETE's query is one object (filters, all, cursor), so that its schema states that
    # `all=true` takes no filter and that one of them is needed.
    (query,) = paths["/dead"]["delete"]["parameters"]
    assert (query["in"], query["style"], query["explode"]) == ("query", "form", True)
    assert {"all", "cursor", "type"} <= set(query["schema"]["properties"])
    retry = paths["/dead/retry"]["post"]
    schema = retry["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["dry_run"] and "422" in retry["responses"]
    assert "404" in paths["/dead/{job_id}/retry"]["post"]["responses"]
    assert "204" in paths["/dead/{job_id}"]["delete"]["responses"]
    secured = build_openapi(registry.load(TEST_MODULES), auth=True)["paths"]["/dead"]["get"]
    assert secured["security"] == [{"bearer": []}] and "401" in secured["responses"]
