"""Tracing: one trace from the POST to every run of the job, across real processes; off by
default, and then free (no opentelemetry import, nothing written on the job)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import redis.asyncio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from service.config import constants
from service.jobs import records
from service.store.publisher import Store
from service.telemetry import tracing
from tests.conftest import ROOT, ServiceProcess, http, make_client, wait_for

Start = Callable[..., ServiceProcess]
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # span kinds, as OTLP's protobuf numbers them
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


# --- the switch -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),  # naming a service alone turns nothing on
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, OTLP,console"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_otel_variables_ask_for_an_exporter(
    environ: dict[str, str], wanted: list[str]
) -> None:
    assert tracing.exporters_wanted(environ) == wanted


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with a clean environment (no OTEL_* from the shell)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def test_off_the_service_never_imports_opentelemetry() -> None:
    # redis-py 8 imports OpenTelemetry's metrics API whenever it is installed (its own optional
    # metrics): the baseline. Our code must add nothing to it: no tracing SDK, no exporter.
    code = """
import sys
import pymongo, redis, rq, starlette, uvicorn
baseline = set(sys.modules)
from service import __main__
from service.jobs import records
from service.telemetry import tracing
from service.api import app, server
from service.worker import process, supervisor
assert tracing.start("service-api") is False
with tracing.enqueue([]) as traceparent:
    assert traceparent == ""
assert tracing.current_trace_id() == ""
tracing.shutdown()
print(sorted(m for m in set(sys.modules) - baseline if m.startswith("opentelemetry")))
"""
    assert run_python(code).stdout.strip() == "[]"


def test_configured_without_the_extra_it_warns_and_stays_off() -> None:
    code = """
import logging, sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
logging.basicConfig()
from service.telemetry import tracing
print(tracing.start("service-api"), tracing.enabled())
"""
    result = run_python(code, OTEL_TRACES_EXPORTER="otlp")
    assert result.stdout.strip() == "False False"
    assert "install the 'otel' extra" in result.stderr


def test_console_exporter_writes_spans_named_after_the_service() -> None:
    code = """
from service.jobs import records
from service.telemetry import tracing
assert tracing.start("service-api")
with tracing.enqueue([records.NewJob("j1", "echo", "app-queue", {}, 10, 0)]) as traceparent:
    print("traceparent", traceparent, flush=True)
tracing.shutdown()
"""
    default = run_python(code, OTEL_TRACES_EXPORTER="console").stdout
    assert '"name": "enqueue"' in default and '"service.name": "service-api"' in default
    assert '"job.id": "j1"' in default
    named = run_python(code, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="jobs-eu").stdout
    assert '"service.name": "jobs-eu"' in named


# --- in one process, with an in-memory exporter ---------------------------------------------
@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, its spans kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.shutdown()
    provider.shutdown()


def publish(redis_url: str, batch: list[records.NewJob], key: str | None = None) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(f"{redis_url}/1")
        store = Store(client)
        if key is None:
            await store.publish(batch)
        else:
            await store.publish_once(batch[0], key, "fingerprint", 60)
        await client.aclose()

    asyncio.run(run())


def new_job(job_type: str = "echo") -> records.NewJob:
    return records.NewJob(records.new_id(), job_type, "app-queue", {}, 10, 0)


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    ids = f"{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}"
    return f"00-{ids}-{context.trace_flags:02x}"


def test_off_no_trace_context_is_written_on_the_job(
    redis_url: str, queue_redis: redis.Redis
) -> None:
    assert not tracing.enabled()
    single, batch, once = new_job(), [new_job(), new_job()], new_job()
    publish(redis_url, [single])
    publish(redis_url, batch)
    publish(redis_url, [once], key="k1")
    for job in (single, *batch, once):
        fields = queue_redis.hgetall(constants.job_key(job.id))
        assert fields[b"status"] == b"queued" and b"traceparent" not in fields


def test_on_every_job_carries_its_enqueue_spans_context(
    spans: InMemorySpanExporter, redis_url: str, queue_redis: redis.Redis
) -> None:
    batch, once = [new_job(), new_job("noop")], new_job()
    publish(redis_url, batch)
    publish(redis_url, [once], key="k1")

    enqueue_batch, enqueue_once = spans.get_finished_spans()
    assert enqueue_batch.name == "enqueue" and enqueue_batch.kind == SpanKind.PRODUCER
    assert enqueue_batch.attributes == {"job.count": 2}
    assert enqueue_once.attributes == {
        "job.count": 1,
        "job.id": once.id,
        "job.type": "echo",
        "job.queue": "app-queue",
    }
    for job in batch:
        stored = queue_redis.hget(constants.job_key(job.id), "traceparent")
        assert stored == traceparent_of(enqueue_batch).encode()
    stored = queue_redis.hget(constants.job_key(once.id), "traceparent")
    assert stored == traceparent_of(enqueue_once).encode()
    assert len({enqueue_batch.context.trace_id, enqueue_once.context.trace_id}) == 2


def test_request_span_continues_the_callers_trace_and_parents_the_enqueue(
    spans: InMemorySpanExporter, redis_url: str
) -> None:
    incoming = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"
    with make_client(redis_url, API_KEYS="k") as client:
        auth = {"Authorization": "Bearer k"}
        accepted = client.post(
            "/jobs", json={"type": "echo"}, headers={**auth, "traceparent": incoming}
        )
        missing = client.get("/jobs/0123456789abcdef0123456789abcdef", headers=auth)
        refused = client.get("/queues")
    assert (accepted.status_code, missing.status_code, refused.status_code) == (202, 404, 401)

    enqueue, post, get, unauthorized = spans.get_finished_spans()
    assert post.name == "POST /jobs" and post.kind == SpanKind.SERVER
    assert format_trace_id(post.context.trace_id) == INCOMING_TRACE
    assert post.parent is not None and format_span_id(post.parent.span_id) == INCOMING_SPAN
    assert post.attributes == {
        "http.request.method": "POST",
        "url.path": "/jobs",
        "http.route": "/jobs",
        "http.response.status_code": 202,
    }
    assert enqueue.parent is not None and enqueue.parent.span_id == post.context.span_id
    assert enqueue.attributes is not None and enqueue.attributes["job.id"] == accepted.json()["id"]
    # A route template, never the id itself, names the span; no incoming context: a new trace.
    assert get.name == "GET /jobs/{job_id}" and get.parent is None
    assert get.attributes is not None and get.attributes["http.response.status_code"] == 404
    assert unauthorized.name == "GET" and unauthorized.status.status_code == StatusCode.UNSET


def test_outcomes_map_to_attributes_status_and_an_exception_event(
    spans: InMemorySpanExporter,
) -> None:
    traceback = "Traceback (most recent call last):\n  ...\nRuntimeError: attempt 1 fails\n"
    cases = [
        ("ok", "", "", "ok"),
        ("fail", "exception", traceback, "failed"),
        ("fail", "timeout", "JobTimeout: past 1s", "timeout"),
        ("cancel", "canceled", "", "canceled"),
        ("interrupt", "interrupted", "", "interrupted"),
    ]
    for kind, reason, error, _ in cases:
        with tracing.job_span("", "j1", "app-queue", 1) as span:
            tracing.set_outcome(span, "echo", kind, reason, error)
    finished = spans.get_finished_spans()
    assert {(s.name, s.kind, s.parent) for s in finished} == {("echo", SpanKind.CONSUMER, None)}
    assert [s.attributes and s.attributes["job.outcome"] for s in finished] == [
        case[3] for case in cases
    ]
    ok, failed, timeout, canceled, interrupted = finished
    for span in (ok, canceled, interrupted):
        assert span.status.status_code == StatusCode.UNSET and not span.events
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "RuntimeError: attempt 1 fails"
    (event,) = failed.events
    assert event.name == "exception" and event.attributes == {
        "exception.type": "RuntimeError",
        "exception.message": "attempt 1 fails",
        "exception.stacktrace": traceback,
    }
    assert timeout.status.status_code == StatusCode.ERROR
    assert timeout.events[0].attributes is not None
    assert timeout.events[0].attributes["exception.type"] == "JobTimeout"


# --- across real processes: an OTLP/HTTP receiver in the test ---------------------------------
# The SDK's in-memory exporter keeps spans in the memory of the process that made them: it
# cannot see the API's and the worker processes' spans. The processes export over real OTLP/HTTP
# (the production path) to this receiver, which decodes the protobuf.
@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int  # SERVER, PRODUCER or CONSUMER
    trace_id: str
    span_id: str
    parent: str  # '' for a root span
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    events: dict[str, dict[str, Any]]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector:
    """Receives OTLP/HTTP trace exports and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        collector = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        Span(
                            service=resource["service.name"],
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code,
                            events={
                                e.name: {a.key: _value(a.value) for a in e.attributes}
                                for e in span.events
                            },
                        )
                    )
        with self.lock:
            self.spans += found

    def where(self, kind: int | None = None, **attributes: Any) -> list[Span]:
        with self.lock:
            return [
                s
                for s in self.spans
                if kind in (None, s.kind)
                and all(s.attributes.get(k) == v for k, v in attributes.items())
            ]

    def wait(self, count: int, kind: int | None = None, **attributes: Any) -> list[Span]:
        """The spans of this kind with these attributes, once there are `count` of them."""
        wait_for(lambda: len(self.where(kind, **attributes)) >= count)
        return self.where(kind, **attributes)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


@pytest.fixture
def traced(start_service: Start, collector: Collector) -> tuple[ServiceProcess, ServiceProcess]:
    """An API and a worker as real processes, both exporting to the collector."""
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export at once, so the test need not stop them
    }
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", **env)
    api = start_service(**env)
    return api, worker


def post(api: ServiceProcess, path: str, body: Any, **headers: str) -> Any:
    status, _, reply = http("POST", f"{api.url}{path}", body, headers)
    assert status == 202, reply
    return reply


def finished(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view = http("GET", f"{api.url}/jobs/{job_id}")[2]
        return view if view["status"] == "finished" else None

    view: dict[str, Any] = wait_for(done)
    return view


def outcome_line(worker: ServiceProcess, job_id: str, fate: str = "finished") -> str:
    """The worker's log line for this outcome of the job (written once it is recorded)."""

    def line() -> str | None:
        lines = worker.output.splitlines()
        return next((line for line in lines if f"job {job_id} " in line and fate in line), None)

    found: str = wait_for(line)
    return found


@pytest.mark.slow
def test_one_trace_from_the_callers_request_to_the_handler(
    traced: tuple[ServiceProcess, ServiceProcess], collector: Collector, queue_redis: redis.Redis
) -> None:
    # Given an API and a worker process exporting spans
    api, worker = traced
    # When a caller in trace INCOMING_TRACE posts a job, and then a batch of two
    job_id = post(
        api,
        "/jobs",
        {"type": "test.trace_id"},
        traceparent=f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01",
    )["id"]
    batch = post(api, "/jobs/batch", {"jobs": [{"type": "noop"}, {"type": "noop"}]})["jobs"]
    view = finished(api, job_id)

    # Then the request, the enqueue and the execution share the caller's trace, parent to child
    (execution,) = collector.wait(1, CONSUMER, **{"job.id": job_id})
    (enqueue,) = collector.wait(1, **{"job.id": job_id, "job.count": 1})
    (request,) = collector.wait(1, **{"url.path": "/jobs", "http.request.method": "POST"})
    assert {request.trace_id, enqueue.trace_id, execution.trace_id} == {INCOMING_TRACE}
    assert request.parent == INCOMING_SPAN and request.service == "service-api"
    assert (request.name, request.kind) == ("POST /jobs", SERVER)
    assert request.attributes["http.response.status_code"] == 202
    assert enqueue.parent == request.span_id and (enqueue.name, enqueue.kind) == (
        "enqueue",
        PRODUCER,
    )
    assert execution.parent == enqueue.span_id and execution.service == "service-worker"
    assert (execution.name, execution.kind, execution.status) == ("test.trace_id", CONSUMER, 0)
    assert execution.attributes == {
        "job.id": job_id,
        "job.type": "test.trace_id",
        "job.queue": "app-queue",
        "job.attempt": 1,
        "job.outcome": "ok",
    }
    # the job carried the enqueue span's context, and the handler ran inside the trace
    carried = queue_redis.hget(constants.job_key(job_id), "traceparent")
    assert carried == f"00-{INCOMING_TRACE}-{enqueue.span_id}-01".encode()
    assert view["result"] == INCOMING_TRACE
    # and the worker's outcome log line leads to the trace
    assert outcome_line(worker, job_id).endswith(f"attempt 1, trace {INCOMING_TRACE}")

    # And each job of the batch runs as a child of the batch's one enqueue span
    for job in batch:
        finished(api, job["id"])
    runs = [collector.wait(1, CONSUMER, **{"job.id": job["id"]})[0] for job in batch]
    (batch_enqueue,) = collector.wait(1, **{"job.count": 2})
    (batch_request,) = collector.wait(1, **{"url.path": "/jobs/batch"})
    assert batch_enqueue.parent == batch_request.span_id
    assert {(run.parent, run.trace_id, run.name) for run in runs} == {
        (batch_enqueue.span_id, batch_request.trace_id, "noop")
    }
    assert batch_request.trace_id != INCOMING_TRACE and batch_request.parent == ""


@pytest.mark.slow
def test_a_retry_continues_the_trace_of_the_request(
    traced: tuple[ServiceProcess, ServiceProcess], collector: Collector
) -> None:
    # Given a job that fails its first attempt, published without any incoming trace context
    api, worker = traced
    immediate = {"type": "fixed", "base": 0, "jitter": False}
    job = {"type": "test.flaky", "payload": {"fail_times": 1}, "backoff": immediate}
    job_id = post(api, "/jobs", job)["id"]
    # When it is retried and succeeds
    assert finished(api, job_id)["attempts"] == 2

    # Then both attempts are execution spans in the request's new trace, children of its enqueue
    first, second = sorted(
        collector.wait(2, CONSUMER, **{"job.id": job_id}),
        key=lambda span: span.attributes["job.attempt"],
    )
    (enqueue,) = collector.wait(1, **{"job.id": job_id, "job.count": 1})
    (request,) = collector.wait(1, **{"url.path": "/jobs"})
    assert request.parent == "" and len(request.trace_id) == 32
    assert {first.trace_id, second.trace_id, enqueue.trace_id} == {request.trace_id}
    assert first.parent == second.parent == enqueue.span_id
    assert (first.attributes["job.attempt"], first.attributes["job.outcome"]) == (1, "failed")
    assert first.status == 2  # error, with the handler's exception recorded
    assert first.events["exception"]["exception.type"] == "RuntimeError"
    assert first.events["exception"]["exception.message"] == "attempt 1 fails"
    assert "Traceback" in first.events["exception"]["exception.stacktrace"]
    assert (second.attributes["job.attempt"], second.attributes["job.outcome"]) == (2, "ok")
    assert second.status == 0 and not second.events
    assert outcome_line(worker, job_id, "retried").endswith(f"retry, trace {request.trace_id}")
