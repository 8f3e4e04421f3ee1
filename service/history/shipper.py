"""Job history: state-change events move from Redis to MongoDB, in bulk, off the job path.

The Lua scripts append every state change to the `rq:history` stream, atomically with the
change, while `rq:history:on` exists: the API and every history shipper with MONGODB_URI keep
it alive, so a job published while no worker runs is recorded whole. The scripts bound the
stream (HISTORY_BUFFER_MAX: beyond it the oldest events are dropped and counted). In each
worker container with MONGODB_URI, a shipper thread, one at a time (a Redis lease), reads the
oldest events, at most WORKER_BATCH_SIZE, writes them with one ordered `bulk_write`, then
deletes them from the stream. A MongoDB outage never touches job processing: events wait in
Redis and land when it is back. An event MongoDB cannot store (an integer beyond 64 bits, a
key it refuses, a part that does not decode) is written without that part, or not at all,
and counted: it never holds up the events after it.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bson
import orjson
import redis
from bson.errors import BSONError
from pymongo import UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from service.config import constants
from service.history.mongo import HISTORY_COLLECTION
from service.jobs import records
from service.jobs.states import Event

log = logging.getLogger("service.history.shipper")

_EVENTS = {event.value: event for event in Event}


# Parts of an event that come from outside (what a client sent, what a handler returned, a
# traceback): what may not decode, or that MongoDB may refuse to store.
CONTENT = ("payload", "result", "error")


class UnreadableEvent(ValueError):
    """A stream entry without a readable job id or event name: nothing of it can be stored."""


def marker(reason: str) -> dict[str, str]:
    """What is stored in place of a part that cannot be: `{"unstorable": "<reason>"}`."""
    return {"unstorable": reason[:200]}


def on_ttl(interval: float) -> int:
    """Seconds `rq:history:on` lives after each refresh (every `interval`): a few missed
    refreshes, not one, let it lapse."""
    return int(constants.HEARTBEAT_MISSES * interval) + 1


def _json_part(raw: bytes, limit: int) -> Any:
    """Decoded JSON, or a marker when it is larger than `limit` bytes or BSON cannot hold it.

    From JSON only an integer outside records.INT64 or a NUL in a key (escaped `\\u0000` in the
    text) can be refused: only a text that may hold one is encoded to see. The client never
    meets such a part in a bulk write, where it would fail the whole batch."""
    if len(raw) > limit:
        return {"truncated": True, "bytes": len(raw)}
    value = orjson.loads(raw)
    if records.may_hold_wide_integer(raw) or b"\\u0000" in raw:
        try:
            bson.encode({"v": value})
        except (OverflowError, BSONError) as exc:
            return marker(f"{type(exc).__name__}: {exc}")
    return value


def _payload(data: bytes) -> Any:
    _, payload = records.decode_data(data)
    return _json_part(orjson.dumps(payload), constants.HISTORY_PAYLOAD_MAX)


def _error(encoded: str) -> str:
    return records.error_summary(zlib.decompress(base64.b64decode(encoded)).decode())


def _content(
    part: str, decode: Callable[[], Any], refused: Mapping[str, str], spoiled: list[str]
) -> Any:
    """`decode()`, or a marker (its reason added to `spoiled`): for a part MongoDB refused,
    one that does not decode, or one BSON cannot hold."""
    if part in refused:
        value = marker(refused[part])
    else:
        try:
            value = decode()
        except (ValueError, TypeError, KeyError, IndexError, zlib.error) as exc:
            value = marker(f"does not decode: {exc}")
    if isinstance(value, dict) and value.keys() == {"unstorable"}:
        spoiled.append(value["unstorable"])
    return value


def _number(text: str | None, kind: type[int] | type[float]) -> Any:
    """The number in `text`; None for none, or for one that is not ours (nor storable): it is
    left out, and the rest of the event is stored."""
    try:
        number = kind(text) if text else None
    except ValueError:
        return None
    return None if isinstance(number, int) and number not in records.INT64 else number


def _moment(epoch: float | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None
    except (OverflowError, OSError, ValueError):
        return None


def update_for(
    entry_id: bytes,
    fields: dict[bytes, bytes],
    refused: Mapping[str, str] | None = None,
    spoiled: list[str] | None = None,
) -> UpdateOne:
    """The MongoDB upsert for one history event (a `rq:history` stream entry).

    A part from outside (CONTENT) that does not decode, that BSON cannot hold, or that MongoDB
    refused (`refused`: part -> reason) is stored as a marker, its reason added to `spoiled`;
    the rest of the event still is. Raises UnreadableEvent when the job id or the event's
    name is missing."""
    refused = refused or {}
    spoiled = [] if spoiled is None else spoiled
    millis = int(entry_id.split(b"-", 1)[0])
    at = datetime.fromtimestamp(millis / 1000, UTC)
    try:
        job_id = fields[b"id"].decode()
        event_name = fields[b"status"].decode()
    except (KeyError, UnicodeDecodeError) as exc:
        raise UnreadableEvent(f"no readable job id or event name: {exc!r}") from None
    text = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in fields.items()
        if k not in (b"data", b"result")
    }
    event: dict[str, Any] = {"event": event_name, "at": at}
    known = _EVENTS.get(event_name)
    status = event_name if known is None else known.status.value  # an unknown event as it is
    changes: dict[str, Any] = {"status": status, "updated_at": at}
    if "worker" in text:
        event["worker"] = changes["worker"] = text["worker"] or None
    if (attempt := _number(text.get("attempt"), int)) is not None:
        event["attempt"] = changes["attempts"] = attempt
    if "reason" in text:
        event["reason"] = text["reason"]
    t0, t1 = _number(text.get("t0"), float), _number(text.get("t1"), float)
    if t0 is not None and t1 is not None:
        event["duration"] = round(t1 - t0, 6)
    if text.get("error"):
        error = _content("error", lambda: _error(text["error"]), refused, spoiled)
        event["error"] = changes["error"] = error
    if b"data" in fields:  # published: what the job is
        changes["type"], changes["queue"] = text.get("type"), text.get("queue")
        changes["payload"] = _content(
            "payload", lambda: _payload(fields[b"data"]), refused, spoiled
        )
        if (run_at := _moment(_number(text.get("run_at"), float))) is not None:
            changes["run_at"] = run_at
    if fields.get(b"result"):
        raw = fields[b"result"]
        changes["result"] = _content(
            "result",
            lambda: _json_part(base64.b64decode(raw), constants.HISTORY_RESULT_MAX),
            refused,
            spoiled,
        )
    return UpdateOne(
        {"_id": job_id},
        {"$setOnInsert": {"created_at": at}, "$set": changes, "$push": {"events": event}},
        upsert=True,
    )


def _refusal(exc: Exception) -> str | None:
    """Why MongoDB cannot store the event `exc` is about; None when it is MongoDB that is
    unavailable (or failing as a whole), and waiting is the answer."""
    if isinstance(exc, OverflowError | BSONError):  # the client could not encode it
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BulkWriteError) and exc.details.get("writeErrors"):
        error = exc.details["writeErrors"][0]  # the server refused this one document
        return f"MongoDB error {error.get('code')}: {error.get('errmsg')}"
    return None


@dataclass(frozen=True, slots=True)
class _Event:
    entry_id: bytes
    fields: dict[bytes, bytes]
    update: UpdateOne
    spoiled: list[str]  # why parts were stored as markers (none: the event is whole)


@dataclass(slots=True)
class Stats:
    """What the shipper has done, for /ready, /metrics and the tests."""

    flushes: int = 0
    shipped: int = 0  # events taken out of Redis: written (whole or in part) or unstorable
    largest_flush: int = 0
    dropped: int = 0  # events the scripts dropped, the stream being full, since it started
    stored_in_part: int = 0  # events written with a part MongoDB refused replaced by a marker
    unstorable: int = 0  # events nothing of which MongoDB could store: not written
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
        self._dropped_total: int | None = None  # rq:history:dropped when last read
        self._causes_logged: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        """Ship until `stop` is set, then once more (bounded) and hand the lease back.

        Nothing ends the loop but `stop`: Redis unavailable waits an interval; anything
        unexpected is logged with its traceback and waits longer each time it repeats."""
        backoff = self.interval
        while not stop.is_set():
            try:
                self.step(stop)
                backoff = self.interval
            except redis.RedisError as exc:
                log.debug("history shipper: Redis unavailable: %s", exc)
                stop.wait(self.interval)
            except Exception:
                log.exception("job history: shipper failed; retrying in %.0f s", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, constants.HISTORY_BACKOFF_MAX)
        deadline = time.monotonic() + constants.HISTORY_DRAIN_SECONDS
        try:
            while self.stats.leader and self.stats.mongo_ok and time.monotonic() < deadline:
                if not self.ship():
                    break
            if self.stats.leader:
                self.redis.delete(constants.HISTORY_LEASE_KEY)
        except Exception:  # the events left wait in Redis for the next shipper
            log.exception("job history: shipping on shutdown failed")

    def step(self, stop: threading.Event) -> None:
        ttl = on_ttl(self.interval)
        self.redis.set(constants.HISTORY_ON_KEY, 1, ex=ttl)
        self.stats.leader = self._lease(ttl)
        if not self.stats.leader:
            stop.wait(self.interval)
            return
        self._note_dropped()
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

    def _note_dropped(self) -> None:
        """Log the events the scripts dropped since the last look: the stream was full
        (HISTORY_BUFFER_MAX), MongoDB or the shippers being behind, or no worker running."""
        total = int(self.redis.get(constants.HISTORY_DROPPED_KEY) or 0)
        if self._dropped_total is None and total:
            log.info("job history: %d events dropped so far, the stream being full", total)
        elif self._dropped_total is not None and total > self._dropped_total:
            excess = total - self._dropped_total
            self.stats.dropped += excess
            log.warning("job history: the stream is full; its %d oldest events dropped", excess)
        self._dropped_total = total

    def ship(self) -> int:
        """Move the oldest events (at most one batch) to MongoDB; return how many left Redis."""
        entries: list[tuple[bytes, dict[bytes, bytes]]]
        entries = self.redis.xrange(constants.HISTORY_STREAM, count=self.batch)  # type: ignore[assignment]
        if not entries:
            return 0
        events = []
        for entry_id, fields in entries:
            spoiled: list[str] = []
            try:
                update = update_for(entry_id, fields, spoiled=spoiled)
            except Exception as exc:  # noqa: BLE001 - UnreadableEvent, or a surprise: this event only
                kind = "" if isinstance(exc, UnreadableEvent) else f" ({type(exc).__name__})"
                self._unstorable(f"unreadable{kind}: {exc}", stored_in_part=False)
                self.redis.xdel(constants.HISTORY_STREAM, entry_id)
                continue
            events.append(_Event(entry_id, fields, update, spoiled))
        try:
            self._write(events)
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

    def _write(self, events: list[_Event]) -> None:
        """One ordered bulk write; raises PyMongoError while MongoDB is unavailable.

        When MongoDB refuses one event, those before it are written (the write is ordered) and
        the rest go one at a time, so that it holds up none of the others; each then leaves
        Redis at once, so that a retry after an outage does not write it twice."""
        if not events:
            return
        try:
            self.collection.bulk_write([event.update for event in events])
        except (PyMongoError, OverflowError, BSONError) as exc:
            if _refusal(exc) is None:
                raise
            written = (
                exc.details["writeErrors"][0]["index"] if isinstance(exc, BulkWriteError) else 0
            )
        else:
            written = len(events)
        for event in events[:written]:
            if event.spoiled:
                self._unstorable(event.spoiled[0], stored_in_part=True)
        if written == len(events):
            return
        if written:
            self.redis.xdel(constants.HISTORY_STREAM, *[e.entry_id for e in events[:written]])
        for event in events[written:]:
            self._write_one(event)
            self.redis.xdel(constants.HISTORY_STREAM, event.entry_id)

    def _write_one(self, event: _Event) -> None:
        """The event whole; if MongoDB refuses it, without its parts from outside; if it still
        refuses, not at all (counted)."""
        try:
            self.collection.bulk_write([event.update])
        except (PyMongoError, OverflowError, BSONError) as exc:
            if (reason := _refusal(exc)) is None:
                raise
        else:
            if event.spoiled:
                self._unstorable(event.spoiled[0], stored_in_part=True)
            return
        degraded = update_for(event.entry_id, event.fields, dict.fromkeys(CONTENT, reason))
        try:
            self.collection.bulk_write([degraded])
        except (PyMongoError, OverflowError, BSONError) as exc:
            if (again := _refusal(exc)) is None:
                raise
            self._unstorable(again, stored_in_part=False)
            return
        self._unstorable(reason, stored_in_part=True)

    def _unstorable(self, reason: str, *, stored_in_part: bool) -> None:
        """Count an event MongoDB could not store whole; log the first of each cause only."""
        if stored_in_part:
            self.stats.stored_in_part += 1
        else:
            self.stats.unstorable += 1
        cause = reason.split(":", 1)[0]
        if cause in self._causes_logged:
            return
        self._causes_logged.add(cause)
        log.warning(
            "job history: MongoDB cannot store an event (%s); %s. Further events for this cause "
            "are counted in service_history_unstorable_events_total, not logged",
            reason,
            "stored without its payload, result and error" if stored_in_part else "not stored",
        )
