"""Abuse and bad input (issue #7): every bad request gets a precise 4xx in the API's error shape,
never a 500 and never a traceback, and enqueues nothing; huge and slow clients are cut off
within stated bounds without starving anyone else.

In-process tests (TestClient) cover statuses and bodies; the real API process (`start_service`)
covers what only a real server shows: memory while a huge body streams in, and slow clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient
from starlette.types import Message

from service.api import params
from service.api.errors import Problems
from service.api.openapi import build_openapi
from service.api.submit import OUT_OF_RANGE
from service.config import constants
from service.dev.embedded_mongo import EmbeddedMongo
from service.jobs import registry
from service.store.publisher import Store
from tests.conftest import (
    NOTHING,
    TEST_HANDLERS,
    TEST_MODULES,
    ServiceProcess,
    enqueued,
    http,
    make_client,
    wait_for,
)

KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json", **AUTH}
# Well-formed (our UUIDv7 shape), never published; dated in the year 6429, so it never reads
# as expired (410). A fixed string: pytest-xdist workers must collect the same test ids.
ANY_ID = "7fffffffffff7000a000000000000000"


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The error body of a response that must have this status and the API's error shape."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return error


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with make_client(redis_url, API_KEYS=KEY, MAX_BODY_BYTES="65536") as test_client:
        yield test_client


# --- API keys -------------------------------------------------------------------------------------
# Every endpoint that reads or changes jobs, each with a request it would otherwise accept.
JOB_ENDPOINTS = [
    ("POST", "/jobs", {"type": "noop"}),
    ("POST", "/jobs/batch", {"jobs": [{"type": "noop"}]}),
    ("GET", "/jobs", None),
    ("GET", f"/jobs/{ANY_ID}", None),
    ("DELETE", f"/jobs/{ANY_ID}", None),
    ("GET", "/queues", None),
    ("GET", "/dead", None),
    ("DELETE", "/dead?all=true", None),
    ("POST", "/dead/retry", {"dry_run": False}),
    ("POST", f"/dead/{ANY_ID}/retry", None),
    ("DELETE", f"/dead/{ANY_ID}", None),
    # What tells about the jobs: queue names, job types and counts, every payload schema.
    ("GET", "/backlog", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {KEY}", KEY, f"Bearer {KEY}x"],
)
def test_every_job_endpoint_needs_a_valid_key(
    client: TestClient, queue_redis: redis.Redis, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in JOB_ENDPOINTS:
        response = client.request(method, path, json=body, headers=headers)
        error = error_of(response, 401)
        assert error["code"] == "unauthorized", path
        assert response.headers["www-authenticate"] == 'Bearer realm="jobs"'
        assert KEY not in response.text
    assert enqueued(queue_redis) == NOTHING


def test_the_key_is_accepted_in_any_scheme_case(client: TestClient) -> None:
    """The control for the test above: the same requests pass with the key."""
    response = client.post(
        "/jobs", json={"type": "noop"}, headers={"Authorization": f"bearer {KEY}"}
    )
    assert response.status_code == 202


# --- Malformed bodies -----------------------------------------------------------------------------
BODY_ENDPOINTS = ["/jobs", "/jobs/batch", "/dead/retry"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"type": ',
        b'{"type": "noop",}',
        b"{'type': 'noop'}",
        b'{"type": "noop"} {"type": "noop"}',
        b'{"type": "\xff"}',  # not UTF-8
        b'\xef\xbb\xbf{"type": "noop"}',  # a byte order mark
        b'{"type": "noop", "payload": {"x": "\\ud800"}}',  # a lone surrogate
        b'{"type": "noop", "delay": NaN}',
        b'{"type": "noop", "delay": Infinity}',
        b"[" * 60_000,  # far deeper than any parser should follow
        b'{"a":' * 12_000,
    ],
    ids=lambda body: repr(body[:24]),
)
def test_malformed_json_is_400(client: TestClient, queue_redis: redis.Redis, body: bytes) -> None:
    for path in BODY_ENDPOINTS:
        error = error_of(client.post(path, content=body, headers=JSON), 400)
        assert error["code"] == "malformed_json", path
    assert enqueued(queue_redis) == NOTHING


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-patch+json",
        "json",
    ],
)
def test_wrong_content_type_is_415(
    client: TestClient, queue_redis: redis.Redis, content_type: str | None
) -> None:
    headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
    bodies = {"/jobs": {"type": "noop"}, "/jobs/batch": {"jobs": [{"type": "noop"}]}}
    bodies["/dead/retry"] = {"dry_run": True}
    for path, body in bodies.items():
        error = error_of(client.post(path, content=orjson.dumps(body), headers=headers), 415)
        assert error["code"] == "unsupported_media_type"
    assert enqueued(queue_redis) == NOTHING
    # The control: the same bodies with a JSON content type (parameters allowed) are accepted.
    headers = {**AUTH, "Content-Type": "Application/JSON; charset=utf-8"}
    assert client.post("/jobs", content=b'{"type": "noop"}', headers=headers).status_code == 202


# --- Bodies over MAX_BODY_BYTES (65536 here) ------------------------------------------------------
def test_declared_body_over_the_limit_is_413_before_it_is_read(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    body = orjson.dumps({"type": "echo", "payload": {"x": "a" * 70_000}})
    for path in BODY_ENDPOINTS:
        response = client.post(path, content=body, headers=JSON)
        assert error_of(response, 413)["code"] == "body_too_large"
    assert enqueued(queue_redis) == NOTHING


async def post_endless_body(app: Any, path: str, chunk: bytes) -> tuple[list[Message], int]:
    """POST a chunked body that never ends straight to the ASGI app: (messages sent, bytes the
    app asked for). The starlette TestClient cannot do this: it reads a whole body first."""
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in JSON.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return sent, pulled


def test_streamed_body_is_read_no_further_than_the_limit(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    """A chunked body with no end: the API stops asking for more once it passed the limit."""
    chunk = b" " * 4096
    assert client.portal is not None  # the app's lifespan runs there
    for path in BODY_ENDPOINTS:
        sent, pulled = client.portal.call(post_endless_body, client.app, path, chunk)
        start, body = sent
        assert start["status"] == 413
        assert orjson.loads(body["body"])["error"]["code"] == "body_too_large"
        assert 65536 < pulled <= 65536 + len(chunk), (path, pulled)
    assert enqueued(queue_redis) == NOTHING


# --- Validation: 422 with every error -------------------------------------------------------------
def test_unknown_type_and_failing_payloads_list_every_error(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    one = {"type": "sleep", "payload": {"seconds": -1, "extra": 1}, "priority": "urgent"}
    error = error_of(client.post("/jobs", json=one, headers=AUTH), 422)
    assert error["code"] == "invalid_job"
    assert {e["field"] for e in error["details"]["errors"]} == {
        "priority",
        "payload.seconds",
        "payload.extra",
    }
    jobs = [
        {"type": "noop"},  # valid: still not enqueued, the batch is all or nothing
        {"type": "no.such.type", "payload": {}},
        {"type": "sleep", "payload": {}, "delay": -5, "max_retries": 99},
        {"type": "echo", "delay": 1, "run_at": "2030-01-01T00:00:00Z"},
        {"payload": {}},
        "not a job",
    ]
    error = error_of(client.post("/jobs/batch", json={"jobs": jobs}, headers=AUTH), 422)
    errors = error["details"]["errors"]
    assert [e["field"] for e in errors] == [
        "jobs[1].type",
        "jobs[2].delay",
        "jobs[2].max_retries",
        "jobs[2].payload.seconds",
        "jobs[3]",
        "jobs[4].type",
        "jobs[5]",
    ]
    assert errors[0]["message"] == "unknown job type 'no.such.type'"
    assert {"echo", "noop", "sleep"} <= set(error["details"]["known_types"])
    assert error["message"] == "7 validation error(s)"
    assert enqueued(queue_redis) == NOTHING


# --- Error replies stay small however bad the request -------------------------------------------
LISTED = constants.LISTED_ERRORS
SMALL_REPLY = 8 * 1024  # bytes: the largest 422 a request with thousands of errors may get


@pytest.fixture
def roomy_client(redis_url: str) -> Iterator[TestClient]:
    """The default MAX_BODY_BYTES (1 MiB): room for the largest bad bodies."""
    with make_client(redis_url, API_KEYS=KEY) as test_client:
        yield test_client


def bad_keys(count: int) -> dict[str, int]:
    return {f"k{i}": 0 for i in range(count)}


# The reproductions: a 650 KB payload with 60,000 keys no schema allows (without pydantic, and
# with it), and a 700 KB batch of 1,000 such payloads: (path, body, errors, first field listed).
THOUSANDS_OF_ERRORS = [
    ("/jobs", {"type": "noop", "payload": bad_keys(60_000)}, 60_000, "payload.k0"),
    ("/jobs", {"type": "sleep", "payload": {"seconds": 1, **bad_keys(60_000)}}, 60_000, None),
    (
        "/jobs/batch",
        {"jobs": [{"type": "noop", "payload": bad_keys(83)} for _ in range(1000)]},
        83_000,
        "jobs[0].payload.k0",
    ),
    (
        "/jobs/batch",
        {"jobs": [{"type": "sleep", "payload": {"seconds": 1, **bad_keys(83)}}] * 1000},
        83_000,
        None,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "count", "first"),
    THOUSANDS_OF_ERRORS,
    ids=["noop", "sleep", "noop-batch", "sleep-batch"],
)
def test_thousands_of_errors_are_counted_and_the_first_listed(
    roomy_client: TestClient,
    queue_redis: redis.Redis,
    path: str,
    body: dict[str, Any],
    count: int,
    first: str | None,
) -> None:
    content = orjson.dumps(body)
    assert 640_000 < len(content) < 1024 * 1024
    response = roomy_client.post(path, content=content, headers=JSON)
    error = error_of(response, 422)
    assert error["code"] == "invalid_job"
    assert error["message"] == f"{count} validation error(s); the first {LISTED} are listed"
    assert error["details"]["error_count"] == count
    assert len(error["details"]["errors"]) == LISTED
    if first is not None:
        assert error["details"]["errors"][0]["field"] == first
    assert len(response.content) < SMALL_REPLY
    assert enqueued(queue_redis) == NOTHING


def test_a_huge_field_name_is_clipped_in_the_reply(
    roomy_client: TestClient, queue_redis: redis.Redis
) -> None:
    key = "k" * 600_000
    response = roomy_client.post("/jobs", json={"type": "noop", "payload": {key: 1}}, headers=AUTH)
    error = error_of(response, 422)
    (listed,) = error["details"]["errors"]
    limit = constants.ERROR_TEXT_MAX_CHARS
    assert listed["field"] == f"payload.{key[: limit - 8]}… (600008 characters)"
    assert error["details"]["error_count"] == 1 and error["message"] == "1 validation error(s)"
    assert len(response.content) < 1024
    assert enqueued(queue_redis) == NOTHING


def test_dead_letter_parameter_errors_are_counted_and_the_first_listed(
    roomy_client: TestClient,
) -> None:
    """The dead-letter endpoints list their errors with the same bound."""
    query = "y" * 10_000 + "=1&" + "&".join(f"x{i}=1" for i in range(1500))
    for method in ("GET", "DELETE"):
        response = roomy_client.request(method, f"/dead?{query}", headers=AUTH)
        error = error_of(response, 422)
        assert error["message"] == (
            f"1501 invalid parameter(s); the first {LISTED} are listed; nothing was changed"
        )
        assert error["details"]["error_count"] == 1501
        assert len(error["details"]["errors"]) == LISTED
        assert error["details"]["errors"][0]["field"].endswith("… (10000 characters)")
        assert len(response.content) < SMALL_REPLY
    body = {"dry_run": True, **bad_keys(60_000)}
    response = roomy_client.post("/dead/retry", json=body, headers=AUTH)
    error = error_of(response, 422)
    assert error["details"]["error_count"] == 60_000
    assert len(error["details"]["errors"]) == LISTED
    assert len(response.content) < SMALL_REPLY


# --- Deep and huge JSON: a 4xx, never a 500 -------------------------------------------------------
def nested(depth: int) -> bytes:
    """A body whose payload makes the whole document `depth` levels deep."""
    inner = depth - 2  # the body object and the payload object are two levels
    return b'{"type": "echo", "payload": {"x": ' + b"[" * inner + b"]" * inner + b"}}"


def test_nesting_up_to_the_limit_is_accepted_beyond_it_400(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    limit = constants.MAX_JSON_DEPTH
    for depth in (limit + 1, limit + 50, 1000):  # orjson itself refuses beyond 1024
        error = error_of(client.post("/jobs", content=nested(depth), headers=JSON), 400)
        assert error["code"] == "malformed_json"
        assert error["message"] == f"the body is nested deeper than {limit} levels"
        batch = b'{"jobs": [' + nested(depth - 2) + b"]}"  # the batch adds two levels
        assert error_of(client.post("/jobs/batch", content=batch, headers=JSON), 400)
    assert enqueued(queue_redis) == NOTHING
    # The control: exactly at the limit it is a job, stored and readable.
    response = client.post("/jobs", content=nested(limit), headers=JSON)
    assert response.status_code == 202
    view = client.get(f"/jobs/{response.json()['id']}", headers=AUTH)
    assert view.status_code == 200
    assert enqueued(queue_redis)["queued"] == 1


def long_string(chars: int) -> str:
    return "é" * (chars // 2)  # two bytes each in UTF-8


# Each body is under the limit (65536 here), and each is wrong somewhere: (body, status, code).
HUGE_BUT_UNDER_THE_LIMIT: list[tuple[bytes, int, str]] = [
    (b'{"type": "echo", "delay": 1e400}', 400, "malformed_json"),
    (b'{"type": "echo", "payload": {"x": -1e400}}', 400, "malformed_json"),
    (b'{"type": "echo", "payload": {"x": 1' + b"0" * 5000 + b"}}", 400, "malformed_json"),
    (b'{"type": "echo", "max_retries": 1' + b"0" * 30 + b"}", 422, "invalid_job"),
    (b'{"type": "echo", "timeout": 18446744073709551616}', 422, "invalid_job"),
    (b'{"type": "echo", "delay": 0.' + b"0" * 5000 + b'1, "run_at": 1}', 422, "invalid_job"),
    (orjson.dumps({"type": long_string(60_000)}), 422, "invalid_job"),
    (orjson.dumps({"type": "noop", "payload": {long_string(60_000): 1}}), 422, "invalid_job"),
    (orjson.dumps({f"k{i}": [i] for i in range(4000)}), 422, "invalid_job"),
    (
        orjson.dumps({"type": "noop", "payload": {f"k{i}": None for i in range(5000)}}),
        422,
        "invalid_job",
    ),
    (
        orjson.dumps({"type": "sleep", "payload": {"seconds": "\u0000" * 10_000}}),
        422,
        "invalid_job",
    ),
    (orjson.dumps({"type": "echo", "idempotency_key": "k" * 60_000}), 422, "invalid_job"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), HUGE_BUT_UNDER_THE_LIMIT, ids=lambda v: repr(v)[:30]
)
def test_huge_but_under_the_limit_is_a_4xx(
    client: TestClient, queue_redis: redis.Redis, body: bytes, status: int, code: str
) -> None:
    assert len(body) <= 65536
    response = client.post("/jobs", content=body, headers=JSON)
    error = error_of(response, status)
    assert error["code"] == code
    listed = error.get("details", {}).get("errors", [])
    texts = [error["message"]] + [e[k] for e in listed for k in ("field", "message")]
    assert max(map(len, texts)) < 1000  # a huge input is not echoed back
    assert len(response.content) < 4096
    # The same item inside a batch, and the same body as a dead-letter retry filter.
    batch = b'{"jobs": [' + body + b"]}"
    assert 400 <= client.post("/jobs/batch", content=batch, headers=JSON).status_code < 500
    assert 400 <= client.post("/dead/retry", content=body, headers=JSON).status_code < 500
    assert enqueued(queue_redis) == NOTHING


def test_huge_but_valid_bodies_are_accepted(client: TestClient, queue_redis: redis.Redis) -> None:
    """The control: size alone is no error below the limit."""
    for payload in (
        {"x": long_string(60_000)},
        {f"k{i}": i for i in range(4000)},
        {"big": 9223372036854775807, "small": -9223372036854775808, "tiny": 1e-300},
    ):
        body = orjson.dumps({"type": "echo", "payload": payload})
        assert client.post("/jobs", content=body, headers=JSON).status_code == 202
    assert enqueued(queue_redis)["queued"] == 3


# Integers outside the signed 64-bit range, anywhere in a job: (the job, the field named).
# orjson reads the first as an int BSON cannot store and the second as the float 1.2e29.
WIDE_INTEGERS = [
    (b'{"type": "echo", "payload": {"n": 18446744073709551615}}', "payload.n"),
    (b'{"type": "echo", "payload": {"n": 123456789012345678901234567890}}', "payload.n"),
    (b'{"type": "echo", "payload": {"n": -9223372036854775809}}', "payload.n"),
    (b'{"type": "echo", "payload": {"n": 9223372036854775808}}', "payload.n"),
    (b'{"type": "echo", "payload": {"a": [1, {"b": -1' + b"0" * 300 + b"}]}}", "payload.a.1.b"),
    (b'{"type": "sleep", "payload": {"seconds": 18446744073709551615}}', "payload.seconds"),
    (b'{"type":"echo","timeout":18446744073709551616}', "timeout"),
]


@pytest.mark.parametrize(
    ("job", "field"),
    WIDE_INTEGERS,
    ids=[
        "uint64-max",
        "beyond-uint64",
        "below-int64",
        "int64-max+1",
        "300-digits",
        "typed",
        "option",
    ],
)
def test_integers_beyond_64_bits_are_422_naming_the_field(
    client: TestClient, queue_redis: redis.Redis, job: bytes, field: str
) -> None:
    error = error_of(client.post("/jobs", content=job, headers=JSON), 422)
    assert error["code"] == "invalid_job"
    assert error["details"]["errors"] == [{"field": field, "message": OUT_OF_RANGE}]
    # As the fourth job of a batch; the others are fine, and none is enqueued.
    batch = b'{"jobs": [' + b'{"type": "noop"}, ' * 3 + job + b"]}"
    error = error_of(client.post("/jobs/batch", content=batch, headers=JSON), 422)
    assert error["details"]["errors"] == [{"field": f"jobs[3].{field}", "message": OUT_OF_RANGE}]
    assert enqueued(queue_redis) == NOTHING


def test_every_wide_integer_is_named_with_the_other_errors(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    batch = {
        "jobs": [
            {"type": "echo", "payload": {"a": 2**64 - 1, "b": [2**63, 5]}},
            {"type": "nope"},
            {"type": "echo", "payload": {"c": -(2**63) - 1}, "max_retries": 2**70},
        ]
    }
    errors = error_of(client.post("/jobs/batch", json=batch, headers=AUTH), 422)["details"]
    assert [e["field"] for e in errors["errors"]] == [
        "jobs[0].payload.a",
        "jobs[0].payload.b.0",
        "jobs[1].type",
        "jobs[2].payload.c",  # in the order they come
        "jobs[2].max_retries",  # once, though also over its own bound
    ]
    assert enqueued(queue_redis) == NOTHING


def test_long_digit_runs_that_are_no_wide_integer_are_accepted(
    client: TestClient, queue_redis: redis.Redis
) -> None:
    """The control: the bounds themselves, and 19 digits or more that are a string, a
    fraction or an exponent, which the first search takes for a possible wide integer."""
    for payload in (
        b'{"max": 9223372036854775807, "min": -9223372036854775808}',
        b'{"id": "1234567890123456789012345", "pi": 3.14159265358979323846264}',
        b'{"x": 12345678901234567890.5, "y": 1e300, "z": 1234567890123456789e-3}',
    ):
        body = b'{"type": "echo", "payload": ' + payload + b"}"
        assert client.post("/jobs", content=body, headers=JSON).status_code == 202
        batch = b'{"jobs": [' + body + b"]}"
        assert client.post("/jobs/batch", content=batch, headers=JSON).status_code == 202
    assert enqueued(queue_redis)["queued"] == 6


# Fields are typed as the OpenAPI document says, strictly: (body, the field in error or None).
TYPED = [
    ({"type": "sleep", "payload": {"seconds": "2"}}, "payload.seconds"),
    ({"type": "sleep", "payload": {"seconds": True}}, "payload.seconds"),
    ({"type": "noop", "max_retries": "3"}, "max_retries"),
    ({"type": "noop", "max_retries": True}, "max_retries"),
    ({"type": "noop", "max_retries": 2.5}, "max_retries"),
    ({"type": "noop", "delay": False}, "delay"),
    ({"type": "noop", "backoff": {"jitter": 1}}, "backoff.jitter"),
    ({"type": "noop", "run_at": 1700000000}, "run_at"),
    ({"type": "noop", "idempotency_key": "caf\u00e9"}, "idempotency_key"),
    ({"type": "noop", "max_retries": 3.0, "delay": 2, "backoff": {"base": 1}}, None),
    ({"type": "sleep", "payload": {"seconds": 1}, "run_at": "2020-01-01T00:00:00+01:00"}, None),
]


@pytest.mark.parametrize(("body", "field"), TYPED, ids=lambda v: repr(v)[:40])
def test_fields_are_typed_strictly(
    client: TestClient, queue_redis: redis.Redis, body: dict[str, Any], field: str | None
) -> None:
    response = client.post("/jobs", json=body, headers=AUTH)
    if field is None:  # the control: JSON's own types, and an integral float for an integer
        assert response.status_code == 202, response.text
        return
    errors = error_of(response, 422)["details"]["errors"]
    assert [e["field"] for e in errors] == [field]
    assert enqueued(queue_redis) == NOTHING


def test_the_payload_is_stored_as_sent(client: TestClient, queue_redis: redis.Redis) -> None:
    """Strict validation reads 3.0 as the integer 3; the payload itself is kept as it came."""
    body = {"type": "echo", "payload": {"x": 5.0, "y": [1, 2.0]}, "max_retries": 3.0}
    job_id = client.post("/jobs", json=body, headers=AUTH).json()["id"]
    job = Job.fetch(job_id, connection=queue_redis, serializer=JSONSerializer)
    assert job.args == [{"x": 5.0, "y": [1, 2.0]}]
    assert isinstance(job.args[0]["x"], float) and job.retries_left == 3


@pytest.mark.parametrize("key", [b"", b"caf\xe9", b"a" * 201, b"tab\there"])
def test_a_bad_idempotency_key_header_is_422(
    client: TestClient, queue_redis: redis.Redis, key: bytes
) -> None:
    headers: dict[str, str | bytes] = {**JSON, "Idempotency-Key": key}
    response = client.post("/jobs", content=b'{"type": "noop"}', headers=headers)
    assert error_of(response, 422)["code"] == "invalid_job"
    assert enqueued(queue_redis) == NOTHING


# --- Query and path parameters: an odd value is a 4xx naming it, never a 500 --------------------
@pytest.fixture(scope="module")
def history_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB stand-in for this module's tests, so that GET /jobs reads its parameters."""
    mongo = EmbeddedMongo(path=str(tmp_path_factory.mktemp("history") / "mongo.sqlite")).start()
    yield mongo.uri
    mongo.stop()


@pytest.fixture
def history_client(redis_url: str, history_uri: str) -> Iterator[TestClient]:
    with make_client(redis_url, API_KEYS=KEY, MONGODB_URI=history_uri) as test_client:
        yield test_client


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# (path, parameter, value): each answered 500 (Python's limit on integer strings, a time that
# is in the year 10000 or 0 in UTC, a cursor holding one); each is now a 422 naming it.
UNCHECKED = [
    ("/dead", "limit", "9" * 5000),
    ("/jobs", "limit", "9" * 5000),
    ("/dead", "limit", "0" * 4999 + "1"),
    ("/jobs", "since", "9999-12-31T23:59:59-23:59"),
    ("/jobs", "until", "0001-01-01T00:00:00+23:59"),
    ("/jobs", "cursor", b64(f"9999-12-31T23:59:59-23:59|{ANY_ID}")),
    ("/dead", "since", "9999-12-31T23:59:59-23:59"),  # the same rule for every time parameter
]


@pytest.mark.parametrize(("path", "name", "value"), UNCHECKED, ids=lambda v: str(v)[:30])
def test_unchecked_parameters_are_422_naming_them(
    history_client: TestClient, path: str, name: str, value: str
) -> None:
    response = history_client.get(path, params={name: value}, headers=AUTH)
    error = error_of(response, 422)
    assert error["code"] == "invalid_parameters"
    assert [e["field"] for e in error["details"]["errors"]] == [name]
    assert error["details"]["error_count"] == 1
    assert len(response.content) < 1024


ODD_VALUES = [
    *["", " ", "0", "-1", "1.5", "1e309", "nan", "-inf", "0x10", "true", "null"],
    *["\uff11\uff10", "\u0663", "9" * 5000, "0" * 4999 + "1", "9" * 18, str(2**64)],
    *["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "0000-01-01T00:00:00Z"],
    *["2026-02-30T00:00:00Z", "2026-01-01T00:00:00." + "1" * 5000 + "Z", "9999-12-31T23:59:59Z"],
    *["0001-01-01T00:00:00Z", "2026-01-01T00:00:00 01:00", "2026-01-01T00:00:00+99:99"],
    *["*", "**", "a*b", "email.*", "$where", '{"$gt": ""}', "\x00", "\ud7ff", "é" * 5000],
    *["a" * 15_000, "!!!", "A" * 5000, "rq:job:*", "../../etc/passwd"],
    # Cursors: the time out of range, without a timezone, odd ids, scores no float can hold.
    b64(f"9999-12-31T23:59:59-23:59|{ANY_ID}"),
    b64(f"2026-01-01T00:00:00|{ANY_ID}"),  # no timezone
    b64("2026-01-01T00:00:00+00:00|" + "x" * 5000),
    b64("2026-01-01T00:00:00+00:00|a|b"),
    b64(f"nan {ANY_ID}"),
    b64(f"1e309 {ANY_ID}"),
    b64("1 " + "a" * 5000),
    b64("9" * 5000 + f" {ANY_ID}"),
]
# Sent as they are, not encoded again: bytes that are not UTF-8, broken escapes, separators.
RAW_VALUES = ["%ff%fe", "%00", "%", "a%2", "%C0%AF", "a=b=c", "&&", "%26"]


def operations_with_parameters() -> list[tuple[str, str, list[str]]]:
    """Every operation that takes no body, with its query parameters (and one it does not
    take), as the OpenAPI document describes them; and the endpoints it does not describe."""
    document = build_openapi(registry.load(TEST_MODULES), auth=True)
    found = [("GET", "/metrics", ["unknown"]), ("GET", "/openapi.json", ["unknown"])]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                continue
            names = [
                name
                for p in operation.get("parameters", [])
                if p["in"] == "query"
                # An object exploded into the query string (DELETE /dead's) is its properties.
                for name in (p["schema"]["properties"] if p.get("explode") else [p["name"]])
            ]
            found.append((method.upper(), path, [*names, "unknown"]))
    return found


@pytest.mark.parametrize(
    ("method", "path", "names"),
    operations_with_parameters(),
    ids=[f"{method} {path}" for method, path, _ in operations_with_parameters()],
)
def test_odd_parameter_values_are_never_a_5xx(
    history_client: TestClient, method: str, path: str, names: list[str]
) -> None:
    """Overlong and odd values in every query parameter of every operation without a body,
    and in its path parameter: each answered, a 4xx in the error shape when refused."""
    encoded = [urllib.parse.quote(value, safe="") for value in ODD_VALUES] + RAW_VALUES
    urls = [
        f"{path.replace('{job_id}', ANY_ID)}?{query}"
        for name in names
        for query in [*(f"{name}={value}" for value in encoded), f"{name}=1&{name}=2"]
    ]
    if "{job_id}" in path:
        urls += [path.replace("{job_id}", value) for value in encoded if value]
    for url in urls:
        response = history_client.request(method, url, headers=AUTH)
        assert response.status_code < 500, (method, url[:120], response.text[:300])
        if response.status_code >= 400:
            error_of(response, response.status_code)
            assert len(response.content) < 4096, (method, url[:120])


OFFSETS = st.sampled_from(["Z", "+00:00", "-23:59", "+23:59", " 05:30", "-00:01"])
# Times anywhere, and near either end of what Python's datetime holds, in any offset.
MOMENTS = st.one_of(
    st.datetimes(),
    st.datetimes(min_value=datetime(9999, 12, 31)),
    st.datetimes(max_value=datetime(1, 1, 1, 23, 59, 59)),
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    value=st.text(max_size=40)
    | st.from_regex(params._RFC3339, fullmatch=True)
    | st.tuples(MOMENTS, OFFSETS).map(lambda t: t[0].isoformat(timespec="seconds") + t[1])
)
def test_a_time_parameter_is_a_representable_instant_or_a_named_problem(value: str) -> None:
    problems = Problems()
    moment = params.instant("since", value, problems)
    assert (moment is None) == bool(problems)  # a time, or a problem (naming `since`)
    if moment is not None:
        datetime.fromtimestamp(moment, UTC)  # within what the server (and MongoDB) can hold


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(value=st.text(max_size=40) | st.integers().map(str) | st.integers(0, 6000).map("9".__mul__))
def test_a_limit_is_in_range_or_a_named_problem(value: str) -> None:
    problems = Problems()
    limit = params.limit(value, problems)
    assert 1 <= limit <= constants.LIST_MAX_LIMIT
    if problems:  # named `limit`; the default meanwhile
        assert limit == constants.LIST_DEFAULT_LIMIT
    else:
        assert value.isdigit() and int(value) == limit


# --- Unknown and malformed ids: 404 ---------------------------------------------------------------
@pytest.mark.parametrize(
    "job_id",
    [
        ANY_ID,
        "f" * 32,
        "a" * 128,
        "a" * 129,
        "no:such",
        "a.b",
        "*",
        "rq:job:*",
        "%00",
        "%20",
        "ü",
        "x" * 5000,
    ],
)
def test_unknown_or_malformed_ids_are_404(
    client: TestClient, queue_redis: redis.Redis, job_id: str
) -> None:
    """An id that cannot exist (RQ allows letters, digits, - and _) is simply not found: 404,
    like an unknown one; it never becomes part of a Redis key."""
    for method, path, code in [
        ("GET", f"/jobs/{job_id}", "job_not_found"),
        ("DELETE", f"/jobs/{job_id}", "job_not_found"),
        ("POST", f"/dead/{job_id}/retry", "not_in_dead_letter_queue"),
        ("DELETE", f"/dead/{job_id}", "not_in_dead_letter_queue"),
    ]:
        error = error_of(client.request(method, path, headers=AUTH), 404)
        assert error["code"] == code, (method, path)
    assert enqueued(queue_redis) == NOTHING


# --- Unhandled errors: a generic 500 --------------------------------------------------------------
SECRET = "secret-detail /srv/app/store.py line 42"


def explode(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


@pytest.mark.parametrize(
    ("target", "method", "path", "body"),
    [
        ("publish_soon", "POST", "/jobs", {"type": "noop"}),
        ("publish", "POST", "/jobs/batch", {"jobs": [{"type": "noop"}]}),
        ("job_and_cursor", "GET", f"/jobs/{ANY_ID}", None),
        ("cancel", "DELETE", f"/jobs/{ANY_ID}", None),
        ("queues", "GET", "/queues", None),
    ],
)
def test_an_unhandled_error_is_a_generic_500(
    client: TestClient,
    queue_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    monkeypatch.setattr(Store, target, explode)
    response = client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }
    assert enqueued(queue_redis) == NOTHING


def test_a_failing_handler_registry_is_a_generic_500(
    client: TestClient, queue_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.jobs.registry import Registry

    monkeypatch.setattr(Registry, "get", explode)
    response = client.post("/jobs", json={"type": "noop"}, headers=AUTH)
    assert error_of(response, 500)["code"] == "internal_error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert enqueued(queue_redis) == NOTHING


def test_an_unhandled_error_in_a_real_process_is_logged_not_answered(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    """A job type whose payload validator has a bug: the client gets the generic 500, the
    operator gets the traceback in the log."""
    from tests.broken_handlers import SECRET as BUG

    api = start_service(HANDLER_MODULES=f"{TEST_HANDLERS},tests.broken_handlers")
    status, _, body = http("POST", f"{api.url}/jobs", {"type": "test.broken"})
    assert (status, body) == (
        500,
        {"error": {"code": "internal_error", "message": "internal server error"}},
    )
    wait_for(lambda: BUG in api.output)
    assert "Traceback" in api.output
    assert enqueued(queue_redis) == NOTHING


# --- Real processes: huge bodies and heads ---------------------------------------------------
def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) / 1024


@dataclass
class Upload:
    sent: int  # bytes of the body sent before the server stopped taking them (or all of it)
    response: bytes  # everything the server answered, up to its closing the connection
    seconds: float  # from the head sent to the connection closed


def upload(port: int, head: bytes, chunks: Iterator[bytes], deadline: float = 30.0) -> Upload:
    """Send a head, then chunks until the server stops taking them, reading its answer all the
    while, as a well-behaved client does: an answer that comes before the body is all sent
    (and the reset that may follow it) is not lost."""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as conn:
        received: list[bytes] = []

        def read() -> None:
            with contextlib.suppress(OSError):  # a reset after the answer
                while chunk := conn.recv(65536):
                    received.append(chunk)

        reader = threading.Thread(target=read)
        begun = time.monotonic()
        sent = 0
        try:
            conn.sendall(head)
            reader.start()
            for chunk in chunks:
                if time.monotonic() - begun > deadline:
                    break
                conn.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe: the server closed the connection
            pass
        reader.join(deadline)
        return Upload(sent, b"".join(received), time.monotonic() - begun)


def endless(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


FIFTY_MIB = 50 * 1024 * 1024
HEAD = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
HEAD += f"Authorization: Bearer {KEY}\r\n".encode()
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
PIECE = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)  # one 64 KiB chunk of a chunked body


@pytest.mark.slow
def test_a_50_mib_body_is_cut_off_at_the_limit_in_bounded_memory(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    api = start_service(API_KEYS=KEY)  # MAX_BODY_BYTES: the default, 1 MiB
    warm_up = upload(api.port, CHUNKED, iter([PIECE] * 20))
    assert warm_up.response.startswith(b"HTTP/1.1 413 ")
    before = peak_rss_mib(api.process.pid)

    # A chunked body (no Content-Length) of 50 MiB: 413 once past the limit, and then
    # the rest is dropped unparsed until the connection is closed.
    cut = upload(api.port, CHUNKED, iter([PIECE] * (FIFTY_MIB // 65536)))
    assert cut.response.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"body_too_large"' in cut.response
    growth = peak_rss_mib(api.process.pid) - before
    assert growth < 8, f"peak RSS grew {growth:.1f} MiB while 50 MiB were offered"

    # A body with no end: the connection is closed within LINGER_SECONDS of the answer.
    cut = upload(api.port, CHUNKED, endless(PIECE))
    assert cut.response.startswith(b"HTTP/1.1 413 ")
    assert cut.seconds < constants.LINGER_SECONDS + 5, cut.seconds

    # A declared Content-Length over the limit: answered before a byte of the body is sent.
    declared = upload(api.port, HEAD + f"Content-Length: {FIFTY_MIB}\r\n\r\n".encode(), iter(()))
    assert declared.response.startswith(b"HTTP/1.1 413 ")
    assert (declared.sent, enqueued(queue_redis)) == (0, NOTHING)


@pytest.mark.slow
def test_an_oversized_request_head_is_431_in_bounded_memory(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    api = start_service()
    before = peak_rss_mib(api.process.pid)
    # One header that never ends.
    cut = upload(api.port, b"POST /jobs HTTP/1.1\r\nHost: x\r\nX-Filler: ", endless(b"a" * 65536))
    assert cut.response.startswith(b"HTTP/1.1 431 ")
    assert b'"code":"headers_too_large"' in cut.response and b"connection: close" in cut.response
    assert cut.seconds < constants.LINGER_SECONDS + 5, cut.seconds
    growth = peak_rss_mib(api.process.pid) - before
    assert growth < 8, f"peak RSS grew {growth:.1f} MiB while an endless header was offered"
    # A long URL, and many small headers, are heads too.
    for head in (
        b"GET /jobs/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n",
    ):
        assert upload(api.port, head, iter(())).response.startswith(b"HTTP/1.1 431 ")
    # The control: a head under the limit (16 KiB) is served.
    status, _, _ = http("GET", f"{api.url}/health", headers={"X-Filler": "a" * 12_000})
    assert status == 200
    assert enqueued(queue_redis) == NOTHING


# --- Real processes: slow clients (slowloris) ------------------------------------------------
HEAD_TIMEOUT = 4.0  # REQUEST_HEADER_TIMEOUT and REQUEST_BODY_TIMEOUT for this test
SLACK = 2.0  # how much later than its timeout a slow connection may be cut off
TRICKLE = 0.05  # seconds between the bytes a slow client sends


@dataclass
class SlowClient:
    """One connection that sends its request a byte at a time (or nothing at all)."""

    kind: str  # head: the request line and headers trickle; body: the body does; idle: nothing;
    # keep-alive: a first request at once, then the next one's head trickles
    port: int
    ready: asyncio.Event
    started: float = 0.0  # when its clock started: connected, or its first response read
    ended: float = 0.0  # when the server closed the connection
    response: bytes = b""

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        head = f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        head += "Content-Type: application/json\r\nContent-Length: 100000\r\n"
        if self.kind == "keep-alive":
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b'{"status":"ok"}')
            self.started = loop.time()
        if self.kind == "body":
            writer.write(f"{head}\r\n".encode())
        trickle = {"head": head, "keep-alive": head, "body": "{" + " " * 99_999, "idle": ""}
        sender = asyncio.create_task(self._trickle(writer, trickle[self.kind].encode()))
        self.response = await reader.read()  # until the server closes the connection
        self.ended = loop.time()
        sender.cancel()
        writer.close()

    async def _trickle(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            if i == 2:
                self.ready.set()
            await asyncio.sleep(TRICKLE)  # the pace of the attack, not a synchronization
        self.ready.set()  # (idle: nothing to send, ready at once)


@pytest.mark.slow
def test_slow_clients_do_not_starve_others_and_are_cut_off(
    start_service: Callable[..., ServiceProcess], queue_redis: redis.Redis
) -> None:
    timeout = str(HEAD_TIMEOUT)
    api = start_service(API_KEYS=KEY, REQUEST_HEADER_TIMEOUT=timeout, REQUEST_BODY_TIMEOUT=timeout)

    async def attack() -> tuple[list[SlowClient], float, bool]:
        kinds = ["head", "body", "idle", "keep-alive"] * 15  # 60 slow connections
        clients = [SlowClient(kind, api.port, asyncio.Event()) for kind in kinds]
        tasks = [asyncio.create_task(client.run()) for client in clients]
        await asyncio.gather(*(client.ready.wait() for client in clients))
        # Given 60 slow connections open and trickling, a normal request answers at once.
        begun = time.monotonic()
        status, _, body = await asyncio.to_thread(
            http, "POST", f"{api.url}/jobs", {"type": "noop"}, AUTH
        )
        assert status == 202, body
        waited = time.monotonic() - begun
        all_open = not any(client.ended for client in clients)
        await asyncio.gather(*tasks)
        return clients, waited, all_open

    clients, waited, all_open = asyncio.run(attack())
    assert all_open, "a slow connection was dropped before the normal request was answered"
    assert waited < HEAD_TIMEOUT, f"the normal request took {waited:.2f} s"
    for client in clients:
        lasted = client.ended - client.started
        # Then each slow connection is cut off within its timeout (and not before it).
        assert HEAD_TIMEOUT - 0.5 <= lasted <= HEAD_TIMEOUT + SLACK, (client.kind, lasted)
        if client.kind == "idle":
            assert client.response == b""  # an idle connection is just closed
        else:
            assert client.response.startswith(b"HTTP/1.1 408 "), (client.kind, client.response)
            assert b'"code":"request_timeout"' in client.response
    # The job of the normal request is the only one.
    assert enqueued(queue_redis) == {**NOTHING, "jobs": 1, "queued": 1}
