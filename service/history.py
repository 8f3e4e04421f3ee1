"""Job history: state-change events move from Redis to MongoDB, in bulk, off the job path.

The Lua scripts append every state change to the `rq:history` stream, atomically with the
change, while `rq:history:on` exists. In each worker container with MONGODB_URI, a shipper
thread keeps that key alive; one shipper at a time (a Redis lease) reads the oldest events,
at most WORKER_BATCH_SIZE, writes them with one ordered `bulk_write`, then deletes them from
the stream. A MongoDB outage never touches job processing: events wait in Redis (bounded by
HISTORY_BUFFER_MAX; beyond it the oldest are dropped and counted) and land when it is back.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import PyMongoError

from service import constants, jobs
from service.mongo import HISTORY_COLLECTION

log = logging.getLogger("service.history")

# The job's status after each event (the same names as in Redis and GET /jobs/{id}).
STATUS_AFTER = {
    "queued": "queued",
    "scheduled": "scheduled",
    "started": "started",
    "retried": "queued",
    "interrupted": "queued",
    "finished": "finished",
    "dead": "failed",
    "canceled": "canceled",
}


def _capped(raw: bytes, limit: int) -> Any:
    """Decoded JSON, or a marker when it is larger than `limit` bytes."""
    if len(raw) > limit:
        return {"truncated": True, "bytes": len(raw)}
    return orjson.loads(raw)


def update_for(entry_id: bytes, fields: dict[bytes, bytes]) -> UpdateOne:
    """The MongoDB upsert for one history event (a `rq:history` stream entry)."""
    millis = int(entry_id.split(b"-", 1)[0])
    at = datetime.fromtimestamp(millis / 1000, UTC)
    job_id = fields[b"id"].decode()
    event_name = fields[b"status"].decode()
    text = {k.decode(): v.decode() for k, v in fields.items() if k not in (b"data", b"result")}
    event: dict[str, Any] = {"event": event_name, "at": at}
    changes: dict[str, Any] = {"status": STATUS_AFTER.get(event_name, event_name), "updated_at": at}
    if "worker" in text:
        event["worker"] = changes["worker"] = text["worker"] or None
    if "attempt" in text:
        event["attempt"] = changes["attempts"] = int(text["attempt"])
    if "reason" in text:
        event["reason"] = text["reason"]
    if text.get("t0") and text.get("t1"):
        event["duration"] = round(float(text["t1"]) - float(text["t0"]), 6)
    if text.get("error"):
        error = zlib.decompress(base64.b64decode(text["error"])).decode()
        event["error"] = changes["error"] = jobs.error_summary(error)
    if b"data" in fields:  # published: what the job is
        job_type, payload = jobs.decode_data(fields[b"data"])
        changes["type"], changes["queue"] = job_type, text.get("queue")
        raw = orjson.dumps(payload)
        changes["payload"] = _capped(raw, constants.HISTORY_PAYLOAD_MAX)
        if text.get("run_at"):
            changes["run_at"] = datetime.fromtimestamp(float(text["run_at"]), UTC)
    if fields.get(b"result"):
        changes["result"] = _capped(
            base64.b64decode(fields[b"result"]), constants.HISTORY_RESULT_MAX
        )
    return UpdateOne(
        {"_id": job_id},
        {"$setOnInsert": {"created_at": at}, "$set": changes, "$push": {"events": event}},
        upsert=True,
    )


@dataclass(slots=True)
class Stats:
    """What the shipper has done, for /ready and the tests."""

    flushes: int = 0
    shipped: int = 0
    largest_flush: int = 0
    dropped: int = 0
    mongo_ok: bool = True
    leader: bool = False


class Shipper:
    def __init__(
        self,
        client: redis.Redis,
        db: Database[dict[str, Any]],
        name: str,
        batch: int,
        interval: float,
    ) -> None:
        self.redis = client
        self.collection = db[HISTORY_COLLECTION]
        self.name = name
        self.batch = batch
        self.interval = interval
        self.stats = Stats()
        self._failing_since = 0.0

    def run(self, stop: threading.Event) -> None:
        """Ship until `stop` is set, then once more (bounded) and hand the lease back."""
        while not stop.is_set():
            try:
                self.step(stop)
            except redis.RedisError as exc:
                log.debug("history shipper: Redis unavailable: %s", exc)
                stop.wait(self.interval)
        deadline = time.monotonic() + constants.HISTORY_DRAIN_SECONDS
        try:
            while self.stats.leader and self.stats.mongo_ok and time.monotonic() < deadline:
                if not self.ship():
                    break
            if self.stats.leader:
                self.redis.delete(constants.HISTORY_LEASE_KEY)
        except redis.RedisError:
            pass

    def step(self, stop: threading.Event) -> None:
        ttl = int(constants.HEARTBEAT_MISSES * self.interval) + 1
        self.redis.set(constants.HISTORY_ON_KEY, 1, ex=ttl)
        self.stats.leader = self._lease(ttl)
        if not self.stats.leader:
            stop.wait(self.interval)
            return
        self._bound()
        if not self.ship():  # nothing shipped: wait for new events (or a retry after failure)
            if self.stats.mongo_ok:
                self.redis.xread({constants.HISTORY_STREAM: "$"}, block=int(self.interval * 1000))
            else:
                stop.wait(self.interval)

    def _lease(self, ttl: int) -> bool:
        key = constants.HISTORY_LEASE_KEY
        if self.redis.set(key, self.name, nx=True, ex=ttl):
            return True
        if self.redis.get(key) == self.name.encode():
            self.redis.expire(key, ttl)
            return True
        return False

    def _bound(self) -> None:
        """Keep the waiting events under HISTORY_BUFFER_MAX: drop (and count) the oldest."""
        length = self.redis.xlen(constants.HISTORY_STREAM)
        excess = length - constants.HISTORY_BUFFER_MAX
        if excess > 0:
            self.redis.xtrim(constants.HISTORY_STREAM, maxlen=constants.HISTORY_BUFFER_MAX)
            self.redis.incrby(constants.HISTORY_DROPPED_KEY, excess)
            self.stats.dropped += excess
            log.warning("job history: MongoDB is behind; dropped the %d oldest records", excess)

    def ship(self) -> int:
        """Move the oldest events (at most one batch) to MongoDB; return how many."""
        entries: list[tuple[bytes, dict[bytes, bytes]]]
        entries = self.redis.xrange(constants.HISTORY_STREAM, count=self.batch)  # type: ignore[assignment]
        if not entries:
            return 0
        try:
            self.collection.bulk_write([update_for(eid, fields) for eid, fields in entries])
        except PyMongoError as exc:
            if self.stats.mongo_ok:
                log.warning(
                    "job history: MongoDB unavailable (%s); %d+ records wait in Redis",
                    exc,
                    len(entries),
                )
            self.stats.mongo_ok = False
            return 0
        if not self.stats.mongo_ok:
            log.info("job history: MongoDB is back; catching up")
        self.stats.mongo_ok = True
        self.redis.xdel(constants.HISTORY_STREAM, *[eid for eid, _ in entries])
        self.stats.flushes += 1
        self.stats.shipped += len(entries)
        self.stats.largest_flush = max(self.stats.largest_flush, len(entries))
        return len(entries)
