"""What the console shows beyond the JSON API: the age of each queue's oldest job, the last
hour's throughput, the workers, a job's full tracebacks, and a bounded job search on Redis when
there is no MongoDB history. Reads only; every key name from service/config/constants.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from service.config import constants
from service.history.mongo import HISTORY_COLLECTION
from service.jobs import records

CHART_MINUTES = 60  # the overview's chart: the last hour, a bar a minute
CHART_MAX_DOCS = 200_000  # most history documents the chart reads (newest first)
REDIS_SEARCH_PER_LIST = 200  # without MongoDB: the newest jobs read per queue and status
STATUS_LISTS = ("queued", "started", "scheduled", "finished", "failed", "canceled")


def _text(value: bytes | str | None) -> str:
    if isinstance(value, str):
        return value
    return value.decode(errors="replace") if value else ""


def _age(stamp: str, now: float) -> float | None:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, round(now - moment.timestamp(), 1))


async def oldest_ages(client: redis.asyncio.Redis, queues: list[str]) -> dict[str, float | None]:
    """Per queue, seconds since its oldest waiting job was enqueued (None: nothing waits)."""
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.lindex(constants.queue_key(q), 0)
        heads = await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        for head in heads:
            pipe.hget(constants.job_key(_text(head) or "-"), "enqueued_at")
        stamps = await pipe.execute()
    now = time.time()
    return {
        q: _age(_text(stamp), now) if head else None
        for q, head, stamp in zip(queues, heads, stamps, strict=True)
    }


async def chart(db: AsyncDatabase[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished and failed jobs per minute over the last hour, from the history."""
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = now - timedelta(minutes=CHART_MINUTES)
    query = {"status": {"$in": ["finished", "failed"]}, "updated_at": {"$gte": start}}
    cursor = db[HISTORY_COLLECTION].find(query, {"status": 1, "updated_at": 1})
    docs = await cursor.sort([("updated_at", -1)]).limit(CHART_MAX_DOCS).to_list()
    counts = [{"finished": 0, "failed": 0} for _ in range(CHART_MINUTES)]
    for doc in docs:
        index = int((doc["updated_at"].replace(tzinfo=UTC) - start).total_seconds() // 60)
        if 0 <= index < CHART_MINUTES:
            counts[index][doc["status"]] += 1
    return [
        {"minute": records.utc_iso((start + timedelta(minutes=i)).timestamp()), **count}
        for i, count in enumerate(counts)
    ]


async def overview(
    client: redis.asyncio.Redis,
    queues: list[dict[str, Any]],
    db: AsyncDatabase[dict[str, Any]] | None,
) -> dict[str, Any]:
    ages = await oldest_ages(client, [q["name"] for q in queues])
    listed = [{**q, "oldest_age": ages[q["name"]]} for q in queues]
    history: list[dict[str, Any]] | None = None
    error = None
    if db is not None:
        try:
            history = await chart(db)
        except PyMongoError as exc:
            error = f"MongoDB is unavailable: {exc}"
    return {
        "queues": listed,
        "chart": history,
        "chart_source": "history" if db is not None else "counters",
        "chart_error": error,
        "now": records.utc_iso(),
    }


async def workers(client: redis.asyncio.Redis) -> list[dict[str, Any]]:
    """Every registered worker process: host (its container), pid, slots, queues, heartbeat
    age, version, and the jobs it runs now."""
    keys = sorted(_text(k) for k in await client.smembers(constants.WORKERS_KEY))
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        found = await pipe.execute()
    now = time.time()
    listed = []
    queues: set[str] = set()
    for key, fields in zip(keys, found, strict=True):
        if not fields:  # expired: its heartbeat stopped
            continue
        text = {_text(k): _text(v) for k, v in fields.items()}
        served = [q for q in text.get("queues", "").split(",") if q]
        queues.update(served)
        name = key.removeprefix(constants.worker_key(""))
        busy, _, total = text.get("slots", "").partition("/")
        listed.append(
            {
                "name": name,
                "host": text.get("hostname", ""),
                "pid": text.get("pid", ""),
                "state": text.get("state", ""),
                "queues": served,
                "busy": int(busy) if busy.isdigit() else None,
                "slots": int(total) if total.isdigit() else None,
                "heartbeat_age": _age(text.get("last_heartbeat", ""), now),
                "version": text.get("version") or None,
                "jobs": [],
            }
        )
    running = await _running(client, sorted(queues))
    for worker in listed:
        worker["jobs"] = running.get(str(worker["name"]), [])
    return listed


async def _running(client: redis.asyncio.Redis, queues: list[str]) -> dict[str, list[str]]:
    """The ids of the started jobs, by the worker holding each."""
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.zrange(constants.registry_key("started", q), 0, -1)
        members = [m for found in await pipe.execute() for m in found]
    ids = [_text(m).split(":", 1)[0] for m in members]
    async with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(constants.job_key(job_id), "worker_name")
        owners = await pipe.execute()
    running: dict[str, list[str]] = {}
    for job_id, owner in zip(ids, owners, strict=True):
        running.setdefault(_text(owner), []).append(job_id)
    return running


async def detail(client: redis.asyncio.Redis, job_id: str) -> dict[str, Any] | None:
    """What the job page shows beyond GET /jobs/{id}: the payload, the trace id, and each
    attempt as the result stream keeps it, its error's whole traceback included (the API gives
    the last line only). None when Redis no longer has the job."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hmget(constants.job_key(job_id), "data", "traceparent")
        pipe.xrange(constants.result_key(job_id))
        (data, traceparent), entries = await pipe.execute()
    if data is None:
        return None
    _, payload = records.read_data(data)
    parts = _text(traceparent).split("-")
    return {
        "payload": payload,
        "trace_id": parts[1] if len(parts) == 4 else None,
        "attempts": [records.decode_result_entry(entry) for _, entry in entries],
    }


async def search_redis(
    client: redis.asyncio.Redis, queues: list[str], given: dict[str, str]
) -> list[dict[str, Any]]:
    """Without MongoDB: the REDIS_SEARCH_PER_LIST newest jobs of each queue and status asked
    for, filtered by type, error text and creation time; newest first."""
    statuses = [given["status"]] if given.get("status") in STATUS_LISTS else list(STATUS_LISTS)
    names = [given["queue"]] if given.get("queue") else queues
    n = REDIS_SEARCH_PER_LIST
    async with client.pipeline(transaction=False) as pipe:
        for q in names:
            for status in statuses:
                if status == "queued":
                    pipe.lrange(constants.queue_key(q), -n, -1)
                else:
                    pipe.zrevrange(constants.registry_key(status, q), 0, n - 1)
        lists = await pipe.execute()
    ids = list(dict.fromkeys(_text(m).split(":", 1)[0] for found in lists for m in found))
    async with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(constants.job_key(job_id))
            pipe.xrevrange(constants.result_key(job_id), count=1)
        found = await pipe.execute()
    jobs = []
    for i, job_id in enumerate(ids):
        fields, last = found[2 * i], found[2 * i + 1]
        if fields:
            history = [records.decode_result_entry(entry) for _, entry in last]
            jobs.append(records.describe(job_id, fields, history))
    return sorted(
        (job for job in jobs if _matches(job, given)),
        key=lambda job: job["created_at"] or "",
        reverse=True,
    )


def _matches(job: dict[str, Any], given: dict[str, str]) -> bool:
    if given.get("type") and job["type"] != given["type"]:
        return False
    if given.get("status") and job["status"] != given["status"]:
        return False
    if given.get("error") and given["error"].lower() not in (job["error"] or "").lower():
        return False
    created = job["created_at"] or ""
    if given.get("since") and created < given["since"]:
        return False
    return not (given.get("until") and created > given["until"])
