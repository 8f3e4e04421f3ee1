"""/schedules against real Redis: created, listed, read, fired by the store's fire wrapper (as
a worker container's scheduler fires it), paused, resumed, changed, deleted and previewed;
precise 422s; schedules declared in code paused but neither changed nor deleted."""

from __future__ import annotations

import types
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis
from starlette.testclient import TestClient

from service.config import constants
from service.jobs.schedule import Schedule, fire_job_id
from service.store.schedules import Definition, Schedules
from tests.conftest import make_client

T = 1_800_000_000  # a whole hour, in epoch seconds
MINUTE = {"type": "test.count", "name": "minutely", "every": 60, "payload": {"key": "k"}}


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url) as test_client:
        yield test_client


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The API's clock, for this module only: `clock.now` is what it reads."""
    fake = types.SimpleNamespace(now=float(T))
    fake.time = lambda: fake.now
    monkeypatch.setattr("service.api.scheduling.time", fake)
    return fake


def queued(queue_redis: redis.Redis, queue: str = "app-queue") -> list[str]:
    return [i.decode() for i in queue_redis.lrange(constants.queue_key(queue), 0, -1)]


def utc(moment: int) -> str:
    return datetime.fromtimestamp(moment, ZoneInfo("UTC")).isoformat()


def test_a_created_schedule_is_listed_and_fires_as_a_worker_fires_it(
    client: TestClient, queue_redis: redis.Redis, clock: types.SimpleNamespace
) -> None:
    # Given a schedule created through the API
    response = client.post("/schedules", json=MINUTE)
    assert response.status_code == 201, response.text
    shown = response.json()
    assert shown == {
        "id": "test.count/minutely",
        "type": "test.count",
        "name": "minutely",
        "origin": "api",
        "cron": None,
        "every": 60,
        "timezone": "UTC",
        "misfire": "fire_once",
        "catch_up_max": 10,
        "grace": 3600,
        "payload": {"key": "k"},
        "paused": False,
        "next_fire": utc(T + 60),
        "last_fire": None,
        "fired": 0,
        "missed": 0,
    }
    assert client.get("/schedules/test.count/minutely").json() == shown
    assert client.get("/schedules").json() == {"schedules": [shown], "next_cursor": None}
    # When a worker container's scheduler finds it due
    fired = Schedules(queue_redis).fire_due(T + 61)
    # Then it publishes one ordinary job of the type, with the payload
    assert [(f.id, f.outcome, f.published) for f in fired] == [("test.count/minutely", "fired", 1)]
    job_id = fire_job_id("test.count/minutely", T + 60)
    assert queued(queue_redis) == [job_id]
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    shown = client.get("/schedules/test.count/minutely").json()
    assert (shown["fired"], shown["last_fire"], shown["next_fire"]) == (
        1,
        utc(T + 60),
        utc(T + 120),
    )


def test_an_unnamed_schedule_is_named_by_a_digest_so_a_repeat_is_a_409(
    client: TestClient,
) -> None:
    body = {"type": "noop", "cron": "0 9 * * MON", "timezone": "Europe/Lisbon"}
    first = client.post("/schedules", json=body)
    assert first.status_code == 201
    name = first.json()["name"]
    assert name == Schedule(cron="0 9 * * MON", timezone="Europe/Lisbon").key()
    again = client.post("/schedules", json=body)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "schedule_exists"
    assert again.json()["error"]["details"] == {"id": f"noop/{name}"}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"type": "nope", "every": 5}, "type", "expected a job type: one of"),
        ({"type": "noop"}, "cron", "give either cron or every"),
        ({"type": "noop", "cron": "* * * * *", "every": 5}, "every", "not both"),
        ({"type": "noop", "cron": "61 * * * *"}, "cron", "cron '61 * * * *': Bad minute"),
        ({"type": "noop", "cron": "* * * *"}, "cron", "five fields"),
        ({"type": "noop", "every": 0}, "every", "expected whole seconds"),
        ({"type": "noop", "every": True}, "every", "expected whole seconds"),
        ({"type": "noop", "every": 5, "timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"type": "noop", "cron": "61 * * * *", "timezone": "X"}, ["cron", "timezone"], "Bad"),
        ({"type": "noop", "every": 5, "misfire": "later"}, "misfire", "skip, fire_once"),
        ({"type": "noop", "every": 5, "catch_up_max": 0}, "catch_up_max", "1-1000"),
        ({"type": "noop", "every": 5, "grace": 90_000}, "grace", "0-86400"),
        ({"type": "noop", "every": 5, "name": ".."}, "name", "expected a name"),
        ({"type": "noop", "every": 5, "when": "now"}, "when", "unknown field"),
        ({"type": "test.count", "every": 5, "payload": {}}, "payload.key", "Field required"),
        ({"type": "test.count", "every": 5, "payload": []}, "payload", "expected an object"),
    ],
)
def test_an_invalid_schedule_is_a_precise_422_and_stores_nothing(
    client: TestClient,
    queue_redis: redis.Redis,
    body: dict[str, object],
    field: str | list[str],
    message: str,
) -> None:
    response = client.post("/schedules", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_schedule"
    fields = field if isinstance(field, list) else [field]
    assert [e["field"] for e in error["details"]["errors"]] == fields, error
    assert message in error["details"]["errors"][0]["message"]
    assert queue_redis.exists(constants.SCHEDULES_KEY) == 0


def test_a_paused_schedule_fires_nothing_and_on_resume_its_policy_decides(
    client: TestClient, queue_redis: redis.Redis, clock: types.SimpleNamespace
) -> None:
    schedules = Schedules(queue_redis)
    client.post("/schedules", json=MINUTE)
    client.post("/schedules", json={**MINUTE, "name": "skipper", "misfire": "skip"})
    # When both are paused
    for name in ("minutely", "skipper"):
        shown = client.post(f"/schedules/test.count/{name}/pause").json()
        assert (shown["paused"], shown["next_fire"]) == (True, None)
    # Then none fires, however late
    assert schedules.fire_due(T + 3600) == []
    assert queued(queue_redis) == []
    # When they are resumed an hour later, they are due at once, and each policy decides
    for name in ("minutely", "skipper"):
        shown = client.post(f"/schedules/test.count/{name}/resume").json()
        assert (shown["paused"], shown["next_fire"]) == (False, utc(T + 60))
    fired = {f.id: f for f in schedules.fire_due(T + 3600)}
    assert (fired["test.count/minutely"].published, fired["test.count/minutely"].missed) == (1, 59)
    assert (fired["test.count/skipper"].published, fired["test.count/skipper"].missed) == (0, 60)
    assert queued(queue_redis) == [fire_job_id("test.count/minutely", T + 60)]
    listing = client.get("/schedules").json()["schedules"]
    assert [(s["name"], s["fired"], s["missed"]) for s in listing] == [
        ("minutely", 1, 59),
        ("skipper", 0, 60),
    ]


def test_a_change_applies_from_the_next_fire_and_a_delete_stops_it(
    client: TestClient, queue_redis: redis.Redis, clock: types.SimpleNamespace
) -> None:
    client.post("/schedules", json=MINUTE)
    # When it changes to a cron expression and another payload
    change = {"cron": "0 * * * *", "payload": {"key": "other"}, "misfire": "skip"}
    response = client.patch("/schedules/test.count/minutely", json=change)
    assert response.status_code == 200, response.text
    shown = response.json()
    assert (shown["cron"], shown["every"], shown["misfire"]) == ("0 * * * *", None, "skip")
    assert (shown["payload"], shown["next_fire"]) == ({"key": "other"}, utc(T + 3600))
    # Then its next fire publishes the new payload
    Schedules(queue_redis).fire_due(T + 3601)
    job = queue_redis.hget(constants.job_key(fire_job_id(shown["id"], T + 3600)), "data")
    assert job is not None and b'"other"' in job
    # A bad change is refused whole
    bad = client.patch("/schedules/test.count/minutely", json={"payload": {}, "every": 0})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["error"]["details"]["errors"]] == [
        "every",
        "payload.key",
    ]
    after = client.get("/schedules/test.count/minutely").json()
    assert (after["every"], after["payload"]) == (None, {"key": "other"})
    # When it is deleted, it is gone and fires nothing
    assert client.delete("/schedules/test.count/minutely").status_code == 204
    assert client.get("/schedules/test.count/minutely").status_code == 404
    assert client.delete("/schedules/test.count/minutely").status_code == 404
    assert Schedules(queue_redis).fire_due(T + 100_000) == []
    assert queue_redis.exists(constants.SCHEDULES_KEY) == 0


def test_a_schedule_declared_in_code_is_paused_but_neither_changed_nor_deleted(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    declared = Definition(
        "noop/daily", "noop", "app-queue", 180, 0, "", 60, 60, Schedule(every=86400, name="daily")
    )
    Schedules(queue_redis).declare([declared], T)
    assert client.get("/schedules/noop/daily").json()["origin"] == "code"
    for response in (
        client.patch("/schedules/noop/daily", json={"every": 60}),
        client.delete("/schedules/noop/daily"),
    ):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "schedule_in_code"
        assert "declared in code" in response.json()["error"]["message"]
    assert client.post("/schedules/noop/daily/pause").json()["paused"] is True
    # The code's next declaration keeps the pause
    assert Schedules(queue_redis).declare([declared], T + 60) == ["same"]
    assert client.get("/schedules/noop/daily").json()["paused"] is True
    assert Schedules(queue_redis).fire_due(T + 10**6) == []


def test_the_preview_crosses_a_daylight_saving_change_as_the_scheduler_fires(
    client: TestClient, clock: types.SimpleNamespace
) -> None:
    # 02:30 daily in New York, seen on 2026-03-06: on the 8th the clocks jump from 02:00 to 03:00
    clock.now = datetime(2026, 3, 6, 12, tzinfo=ZoneInfo("America/New_York")).timestamp()
    body = {"type": "noop", "name": "night", "cron": "30 2 * * *", "timezone": "America/New_York"}
    assert client.post("/schedules", json=body).status_code == 201
    preview = client.get("/schedules/noop/night/preview").json()
    assert preview["timezone"] == "America/New_York"
    assert preview["fire_times"][:4] == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00",  # 02:30 does not exist: the next valid instant
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]
    assert len(preview["fire_times"]) == 10


def test_a_schedule_another_version_stored_is_a_409_and_left_out_of_the_listing(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    queue_redis.hset(
        constants.schedule_key("noop/future"), mapping={"spec": "{}", "next": T, "origin": "api"}
    )
    queue_redis.zadd(constants.SCHEDULES_KEY, {"noop/future": T})
    for response in (
        client.get("/schedules/noop/future"),
        client.get("/schedules/noop/future/preview"),
        client.patch("/schedules/noop/future", json={"every": 60}),
    ):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "schedule_unreadable"
    assert client.get("/schedules").json() == {"schedules": [], "next_cursor": None}


def test_a_path_no_schedule_can_have_is_a_404(client: TestClient) -> None:
    for path in ("/schedules/Bad/x", "/schedules/noop/%2E%2E", "/schedules/noop/a%20b/pause"):
        response = client.get(path) if "pause" not in path else client.post(path)
        assert response.status_code == 404, path
    response = client.post("/schedules/noop/missing/resume")
    assert response.json()["error"]["code"] == "schedule_not_found"


def test_every_schedule_path_needs_a_key_when_keys_are_set(redis_url: str) -> None:
    with make_client(redis_url, API_KEYS="key-one") as client:
        assert client.get("/schedules").status_code == 401
        assert client.post("/schedules/noop/x/pause").status_code == 401
        auth = {"Authorization": "Bearer key-one"}
        assert client.get("/schedules", headers=auth).status_code == 200


def test_the_listing_pages_by_next_fire_then_id_the_paused_last(
    client: TestClient, clock: types.SimpleNamespace
) -> None:
    # Given seven schedules: three sharing a next fire time, three later, one paused
    for name, every in [("b", 60), ("a", 60), ("c", 60), ("d", 120), ("e", 300), ("f", 600)]:
        body = {"type": "test.count", "name": name, "every": every, "payload": {"key": "k"}}
        assert client.post("/schedules", json=body).status_code == 201
    body = {"type": "test.count", "name": "z", "every": 30, "payload": {"key": "k"}}
    assert client.post("/schedules", json=body).status_code == 201
    assert client.post("/schedules/test.count/z/pause").status_code == 200
    # When it is read two at a time, following next_cursor
    seen: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page = client.get("/schedules", params={"limit": 2, "cursor": cursor}).json()
        assert len(page["schedules"]) <= 2
        seen += [one["id"] for one in page["schedules"]]
        cursor = page["next_cursor"]
    # Then each shows once, the soonest first (ties by id), the paused last
    assert seen == [f"test.count/{name}" for name in "abcdefz"]
    assert client.get("/schedules").json()["next_cursor"] is None  # all on the default page
    first = client.get("/schedules", params={"limit": 3}).json()
    assert first["next_cursor"] == f"{T + 60}_test.count/c"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "soon_test.count/a"}, "cursor"),
        ({"cursor": "12_no-name"}, "cursor"),
        ({"page": "2"}, "page"),
    ],
)
def test_a_bad_listing_parameter_is_a_422(
    client: TestClient, query: dict[str, str], field: str
) -> None:
    response = client.get("/schedules", params=query)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameters"
    assert [e["field"] for e in error["details"]["errors"]] == [field]
