"""OpenTelemetry tracing, optional: one trace from the HTTP request to each run of the job.

On only when the standard OTEL_* variables ask for an exporter (OTEL_TRACES_EXPORTER, or an
OTLP endpoint) and the `otel` extra is installed. Off, nothing here imports opentelemetry
(redis-py 8 does import its metrics API whenever it is installed), no job carries a trace
context, and every hook below returns after one check of `_tracer`.

Spans: the API's request span (SERVER, honoring an incoming `traceparent`), its `enqueue` child
(PRODUCER) around the publish script, and in the worker one execution span per attempt
(CONSUMER, named after the job type), a child of the enqueue span through the `traceparent`
field the publish script stores on the job hash. A retry reads the same field, so every attempt
of a job lands in the trace of the request that made it.

The SDK's own autoconfiguration (`opentelemetry.sdk._configuration`) is private, so this module
builds the provider itself from the same variables; the SDK still reads the rest (exporter
endpoints, headers and timeouts, OTEL_BSP_*, OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from service.config import constants
from service.jobs import records
from service.jobs.states import Ending

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("service.telemetry.tracing")

_tracer: Tracer | None = None  # set while tracing is on in this process
_provider: TracerProvider | None = None  # the provider `start` built, shut down by `shutdown`
_OFF: contextlib.nullcontext[str] = contextlib.nullcontext("")  # `enqueue` while off
# The span's job.outcome for an attempt that did not fail.
JOB_OUTCOMES = {Ending.OK: "ok", Ending.CANCEL: "canceled", Ending.INTERRUPT: "interrupted"}


def exporters_wanted(environ: Mapping[str, str]) -> list[str]:
    """The exporters the OTEL_* variables ask for; [] means tracing stays off.

    Unlike the SDK's default (otlp), an unset OTEL_TRACES_EXPORTER means off unless an OTLP
    endpoint is set: a service nobody configured for tracing never tries to export.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    wanted = [name.strip().lower() for name in names.split(",")]
    return [name for name in dict.fromkeys(wanted) if name and name != "none"]


def start(default_service_name: str) -> bool:
    """Turn tracing on for this process if the environment asks for it; True if it is on.

    Call once per process, after a fork or spawn (worker processes each call it). Problems (an
    unknown exporter, the extra not installed) are logged and leave tracing off: tracing never
    stops the service.
    """
    wanted = exporters_wanted(os.environ)
    if not wanted:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "tracing is configured (%s) but OpenTelemetry is not installed (%s): install the "
            "'otel' extra; tracing is off",
            ",".join(wanted),
            exc,
        )
        return False
    exporters = [exporter for name in wanted if (exporter := _exporter(name)) is not None]
    if not exporters:
        return False
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": default_service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # handlers' own spans nest inside the job's span
    global _provider
    _provider = provider
    use(provider)
    log.info("tracing on: %s as %s", ",".join(wanted), resource.attributes.get("service.name", ""))
    return True


def _exporter(name: str) -> SpanExporter | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored (otlp, console)", name)
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",  # the specification's default
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    log.warning("OTEL_EXPORTER_OTLP_PROTOCOL: %r is not supported (grpc, http/protobuf)", protocol)
    return None


def use(provider: TracerProvider) -> None:
    """Trace with `provider` from now on (tests pass one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("service")


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered and stop, waiting at most TRACING_FLUSH_SECONDS: a collector
    that is down must not hold up a shutdown (the exporter retries for up to its timeout)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return
    done = threading.Thread(target=provider.shutdown, name="tracing-shutdown", daemon=True)
    done.start()
    done.join(constants.TRACING_FLUSH_SECONDS)
    if done.is_alive():
        log.warning(
            "tracing: spans not exported within %ss dropped", constants.TRACING_FLUSH_SECONDS
        )


def current_trace_id() -> str:
    """The trace id of the current span as 32 hex digits; '' when tracing is off."""
    if _tracer is None:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


# --- the API ------------------------------------------------------------------------------------
@contextlib.contextmanager
def request_span(method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Iterator[Span]:
    """The span of one HTTP request: a child of the caller's trace context when the request
    carries one (`traceparent`, or what OTEL_PROPAGATORS names), else a new trace."""
    assert _tracer is not None, "tracing is off"
    from opentelemetry import propagate, trace

    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
    attributes = {"http.request.method": method, "url.path": path}
    with _tracer.start_as_current_span(
        method,
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        yield span


def set_response(span: Span, method: str, status: int, route: str | None) -> None:
    """Name the request span after its route template (never the raw path: ids in it would
    make every request a name of its own) and record the response status."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if route is not None:
        span.set_attribute("http.route", route)
        span.update_name(f"{method} {route}")
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def enqueue(batch: Sequence[records.NewJob]) -> contextlib.AbstractContextManager[str]:
    """Around publishing `batch`: the enqueue span, yielding the `traceparent` to store on each
    job (its context: every job's execution spans are its children); '' when tracing is off."""
    if _tracer is None:
        return _OFF
    return _enqueue_span(_tracer, batch)


@contextlib.contextmanager
def _enqueue_span(tracer: Tracer, batch: Sequence[records.NewJob]) -> Iterator[str]:
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes: dict[str, Any] = {"job.count": len(batch)}
    if len(batch) == 1:
        job = batch[0]
        attributes.update({"job.id": job.id, "job.type": job.type, "job.queue": job.queue})
    with tracer.start_as_current_span("enqueue", kind=SpanKind.PRODUCER, attributes=attributes):
        # Always W3C on the job, whatever OTEL_PROPAGATORS says for HTTP: it is our own format.
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        yield carrier.get("traceparent", "")


# --- the worker ---------------------------------------------------------------------------------
@contextlib.contextmanager
def job_span(traceparent: str, job_id: str, queue: str, attempt: int) -> Iterator[Span]:
    """One attempt of a job: a child of the context the job carries (its enqueue span), or a
    new trace for a job published without one. `set_outcome` names it once the job's type is
    known (decoded inside)."""
    assert _tracer is not None, "tracing is off"
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    attributes: dict[str, Any] = {"job.id": job_id, "job.queue": queue, "job.attempt": attempt}
    with _tracer.start_as_current_span(
        "job", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def set_outcome(span: Span, job_type: str, kind: Ending, reason: str, error: str) -> None:
    """Name the attempt's span after its job type and record how it ended (the COMPLETE
    outcome `kind` and `reason`): `job.outcome` is ok, failed, timeout, canceled or
    interrupted; a failure sets status ERROR with an `exception` event built from the error
    text the job keeps (for an isolated job that is the child's own traceback, whose exception
    never reaches this process)."""
    from opentelemetry.trace import Status, StatusCode

    span.update_name(job_type)
    span.set_attribute("job.type", job_type)
    if kind in JOB_OUTCOMES:
        span.set_attribute("job.outcome", JOB_OUTCOMES[kind])
        return
    span.set_attribute("job.outcome", "timeout" if reason == "timeout" else "failed")
    last = records.error_summary(error) or reason
    exception_type, _, message = last.partition(": ")
    span.add_event(
        "exception",
        {
            "exception.type": exception_type,
            "exception.message": message,
            "exception.stacktrace": error,
        },
    )
    span.set_status(Status(StatusCode.ERROR, last))
