"""A job as RQ stores it: the fields of `rq:job:<id>` and the entries of `rq:results:<id>`.

Pure encoding and decoding, no I/O: the publisher, the worker and the API's readers share it,
so a job written by one is read the same way by the others and by RQ's own classes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.config import constants
from service.jobs.states import Status


def new_id(now: float | None = None) -> str:
    """A UUIDv7 in hex: time-ordered, and its first 12 digits are the creation time in ms,
    so an id alone tells how old a job is (see `id_created_at`)."""
    millis = int((time.time() if now is None else now) * 1000) & (2**48 - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # RFC 9562 variant
    return f"{value:032x}"


_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def valid_id(job_id: str) -> bool:
    """RQ's rule for ids (letters, digits, '-', '_'): anything else cannot exist, and must
    never reach a key name."""
    return _ID.fullmatch(job_id) is not None


def id_created_at(job_id: str) -> float | None:
    """The creation time (epoch seconds) in one of our ids; None for any other id."""
    if len(job_id) != 32 or job_id[12] != "7":
        return None
    try:
        return int(job_id[:12], 16) / 1000
    except ValueError:
        return None


def as_text(value: bytes | str) -> str:
    """A Redis reply as text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_iso(timestamp: float | None = None) -> str:
    """RQ's timestamp format: `2026-11-29T05:58:37.000167Z`. Called for every job, so the
    seconds part is formatted once per second (strftime costs microseconds)."""
    global _second
    now = time.time() if timestamp is None else timestamp
    whole = int(now)
    cached, text = _second
    if whole != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((now - whole) * 1_000_000):06d}Z"


def epoch(stamp: str | None) -> float | None:
    """Epoch seconds of an RQ timestamp (UTC, `Z` or not); None for none or a malformed one."""
    try:
        moment = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        return None
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# Integers MongoDB (BSON) can store, and that orjson reads exactly: a larger one becomes an
# inexact float (10**30 as 1e30), or, up to 2**64 - 1, an int BSON refuses.
INT64 = range(-(2**63), 2**63)
# Only an integer literal of 19 digits or more can fall outside INT64 (2**63 has 19).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def may_hold_wide_integer(raw: bytes) -> bool:
    """Whether the JSON text `raw` may hold an integer outside INT64: it has a run of 19
    digits or more. One pass at C speed (every digit mapped to 0, then a search for 19 zeros,
    far cheaper than a regular expression): it runs on every request body, and only a text
    where it is true needs the full check."""
    return _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO)


def decode_data(data: bytes) -> tuple[str, Any]:
    """(job type, payload) from RQ's `data` field, JSON [func_name, instance, args, kwargs],
    zlib-compressed or not (RQ writes it compressed when it saves a job); never unpickles."""
    with contextlib.suppress(zlib.error):  # RQ also accepts uncompressed data
        data = zlib.decompress(data)
    func_name, _instance, args, _kwargs = orjson.loads(data)
    return func_name, args[0] if args else None


def read_data(data: bytes | None) -> tuple[str | None, Any]:
    """(job type, payload) as `decode_data` reads them; (None, None) for data that is not in
    its layout: a job RQ pickled (its default serializer), or none at all. Never unpickles."""
    if data is None:
        return None, None
    try:
        job_type, payload = decode_data(data)
    except (ValueError, TypeError, LookupError):
        return None, None
    return (job_type, payload) if isinstance(job_type, str) else (None, None)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job, ready to publish, with every policy resolved (request, else type)."""

    id: str
    type: str
    queue: str  # the RQ queue, priority applied
    payload: Any
    timeout: int
    max_retries: int
    backoff: str = ""  # the Backoff policy as JSON; '' retries at once
    result_ttl: int = constants.RESULT_TTL
    failure_ttl: int = constants.FAILURE_TTL
    run_at: float | None = None  # epoch seconds: scheduled until then
    depends_on: tuple[str, ...] = ()  # the ids of its parents: deferred until they finish
    allow_failure: bool = False  # runs when a parent fails for good, instead of being canceled


class ResultRejected(Exception):
    """A handler's return value that cannot be stored: its attempt fails with `reason`
    (result_not_json or result_too_large), the message as its error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def result_json(value: Any, max_bytes: int) -> bytes:
    """The JSON of a handler's return value, at most `max_bytes` long, else ResultRejected."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ResultRejected("result_not_json", f"ResultNotJson: {exc}") from None
    if len(encoded) > max_bytes:
        message = (
            f"ResultTooLarge: the result is {len(encoded)} bytes of JSON, "
            f"over MAX_RESULT_BYTES ({max_bytes}); it was not stored"
        )
        raise ResultRejected("result_too_large", message)
    return encoded


def encode_return_value(encoded: bytes) -> bytes:
    """A result's JSON as the results stream keeps it (RQ's `return_value`); b'' for null."""
    return b"" if encoded == b"null" else base64.b64encode(encoded)


def encode_exc_string(text: str) -> bytes:
    return base64.b64encode(zlib.compress(text[-constants.JOB_ERROR_MAX_CHARS :].encode()))


RESULT_OUTCOMES = {1: "finished", 2: "failed", 3: "stopped", 4: "retried"}


def decode_result_entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One results-stream entry (one attempt) as the API shows it."""
    kind = int(fields.get(b"type", b"0"))
    reason = fields.get(b"reason", b"").decode()
    entry: dict[str, Any] = {
        "outcome": reason if kind == 3 and reason else RESULT_OUTCOMES.get(kind, "unknown"),
        "reason": reason or None,
        "worker": fields.get(b"worker_name", b"").decode() or None,
        "started_at": _stamp(fields.get(b"execution_started_at")),
        "ended_at": _stamp(fields.get(b"execution_ended_at")),
    }
    if b"return_value" in fields:
        entry["result"] = _result(fields[b"return_value"])
    if b"exc_string" in fields and (error := _error_text(fields[b"exc_string"])) is not None:
        entry["error"] = error
    return entry


def _result(raw: bytes) -> Any:
    """A return value as we write it (base64 of JSON); None for one RQ pickled."""
    try:
        return orjson.loads(base64.b64decode(raw))
    except (ValueError, binascii.Error):
        return None


def _error_text(raw: bytes) -> str | None:
    try:
        return zlib.decompress(base64.b64decode(raw)).decode(errors="replace")
    except (ValueError, binascii.Error, zlib.error):
        return None


def _stamp(raw: bytes | None) -> str | None:
    """An epoch time (RQ's or ours) as RQ's timestamp; None for none, or one out of range."""
    try:
        return utc_iso(float(raw)) if raw else None
    except (ValueError, OverflowError, OSError):
        return None


def _count(raw: bytes | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


def _parents(raw: bytes | None) -> list[str]:
    """RQ's `dependency_ids` field (a JSON list of ids) as a list; [] for none."""
    try:
        ids = orjson.loads(raw) if raw else []
    except orjson.JSONDecodeError:
        return []
    return [one for one in ids if isinstance(one, str)] if isinstance(ids, list) else []


def error_summary(traceback_text: str, limit: int | None = None) -> str:
    """The last line of a traceback: `JobFailed: boom`, clipped to `limit` characters."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return last if limit is None or len(last) <= limit else last[: limit - 1] + "…"


def describe(
    job_id: str, fields: dict[bytes, bytes], history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The public view of a job, as GET /jobs/{id} returns it. `history`: oldest attempt first."""

    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return value.decode(errors="replace") if value else None

    # A job RQ itself enqueued (its data and results pickled, no run_at) shows the rest.
    job_type, _payload = read_data(fields.get(b"data"))
    status = text("status")
    view: dict[str, Any] = {
        "id": job_id,
        "type": job_type,
        "queue": text("origin"),
        "status": status,
        "attempts": _count(fields.get(b"attempts")),
        "retries_left": _count(fields.get(b"retries_left")),
        "crashes": _count(fields.get(b"crashes")),
        "created_at": text("created_at"),
        "enqueued_at": text("enqueued_at"),
        "started_at": text("started_at"),
        "ended_at": text("ended_at"),
        "run_at": _stamp(fields.get(b"run_at")) if status == Status.SCHEDULED else None,
        "depends_on": _parents(fields.get(b"dependency_ids")),
        "allow_failure": fields.get(b"allow_dependency_failures") == b"1",
        # A job canceled because a parent cannot finish: why, and which parent.
        "reason": text("cancel_reason") if status == Status.CANCELED else None,
        "dependency": text("cancel_dependency") if status == Status.CANCELED else None,
        "worker": text("worker_name"),
        "progress": None,
        "result": None,
        "error": None,
        "history": [],
    }
    if b"progress" in fields:
        with contextlib.suppress(ValueError):
            view["progress"] = orjson.loads(fields[b"progress"])
    for entry in history:
        view["history"].append(
            {
                k: (error_summary(v) if k == "error" else v)
                for k, v in entry.items()
                if k != "result"
            }
        )
    if history:
        latest = history[-1]
        view["result"] = latest.get("result")
        if "error" in latest:
            view["error"] = error_summary(latest["error"])
    return view
