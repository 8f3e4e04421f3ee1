"""A job as RQ stores it: the fields of `rq:job:<id>` and the entries of `rq:results:<id>`.

Pure encoding and decoding, no I/O: the publisher, the worker and the API's readers share it,
so a job written by one is read the same way by the others and by RQ's own classes.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from service import constants

Status = Literal["queued", "scheduled", "started", "finished", "failed", "canceled"]

# RQ's Result.Type values, in the `type` field of a results-stream entry.
RESULT_SUCCESSFUL = b"1"
RESULT_FAILED = b"2"
RESULT_RETRIED = b"4"


def new_id() -> str:
    return uuid.uuid4().hex


def utc_iso(timestamp: float | None = None) -> str:
    """RQ's timestamp format: `2026-11-29T05:58:37.000167Z`."""
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decode_data(data: bytes) -> tuple[str, Any]:
    """(job type, payload) from RQ's `data` field, JSON [func_name, instance, args, kwargs],
    zlib-compressed or not (RQ writes it compressed when it saves a job); never unpickles."""
    with contextlib.suppress(zlib.error):  # RQ also accepts uncompressed data
        data = zlib.decompress(data)
    func_name, _instance, args, _kwargs = orjson.loads(data)
    return func_name, args[0] if args else None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job, ready to publish."""

    id: str
    type: str
    queue: str
    payload: Any
    timeout: int
    max_retries: int


def publish_args(batch: Sequence[NewJob], now: float) -> list[str | bytes | int]:
    """ARGV for the PUBLISH script: shared values once, then six per job.

    `data` is RQ's layout, uncompressed: RQ reads raw JSON too, and small payloads gain
    nothing from zlib.
    """
    args: list[str | bytes | int] = [utc_iso(now), constants.RESULT_TTL, constants.FAILURE_TTL]
    for job in batch:
        data = orjson.dumps([job.type, None, [job.payload], {}])
        args += [job.id, job.queue, job.type, data, job.timeout, job.max_retries]
    return args


def encode_return_value(value: Any) -> bytes:
    return base64.b64encode(orjson.dumps(value))


def encode_exc_string(text: str) -> bytes:
    return base64.b64encode(zlib.compress(text[-constants.JOB_ERROR_MAX_CHARS :].encode()))


def decode_result_entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One results-stream entry as {"type", "result"?, "error"?, "worker"}."""
    entry: dict[str, Any] = {"type": int(fields.get(b"type", b"0")), "worker": ""}
    entry["worker"] = fields.get(b"worker_name", b"").decode()
    if b"return_value" in fields:
        entry["result"] = orjson.loads(base64.b64decode(fields[b"return_value"]))
    if b"exc_string" in fields:
        entry["error"] = zlib.decompress(base64.b64decode(fields[b"exc_string"])).decode()
    return entry


def error_summary(traceback_text: str) -> str:
    """The last line of a traceback: `JobFailed: boom`."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def describe(
    job_id: str, fields: dict[bytes, bytes], latest: dict[str, Any] | None
) -> dict[str, Any]:
    """The public view of a job, as GET /jobs/{id} returns it."""

    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return value.decode() if value else None

    job_type, _payload = decode_data(fields[b"data"]) if b"data" in fields else ("", None)
    view: dict[str, Any] = {
        "id": job_id,
        "type": job_type,
        "queue": text("origin"),
        "status": text("status"),
        "attempts": int(fields.get(b"attempts", b"0") or 0),
        "retries_left": int(fields.get(b"retries_left", b"0") or 0),
        "created_at": text("created_at"),
        "enqueued_at": text("enqueued_at"),
        "started_at": text("started_at"),
        "ended_at": text("ended_at"),
        "worker": text("worker_name"),
        "result": None,
        "error": None,
    }
    if latest is not None:
        view["result"] = latest.get("result")
        if "error" in latest:
            view["error"] = error_summary(latest["error"])
    return view
