"""The registry: one table of job types, with payload schemas and policies."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel, ConfigDict

from service.config import constants
from service.jobs.context import JobContext
from service.jobs.registry import EmptyPayload, PayloadInvalid, Registry, UnknownJobType
from tests.conftest import ROOT


class Email(BaseModel):
    to: str
    subject: str


def test_registration_takes_the_schema_from_the_handler_annotation() -> None:
    registry = Registry()

    @registry.job("email.send", queue="mail", timeout=30, max_retries=3)
    def send(payload: Email, ctx: JobContext) -> None: ...

    spec = registry.get("email.send")
    assert spec.payload is Email
    assert (spec.queue, spec.timeout, spec.max_retries, spec.isolated) == ("mail", 30, 3, False)
    assert spec.handler is send
    assert registry.names() == ["email.send"]


def test_a_handler_without_a_model_takes_an_empty_payload() -> None:
    registry = Registry()

    @registry.job("tick")
    def tick(payload: object, ctx: JobContext) -> None: ...

    spec = registry.get("tick")
    assert spec.payload is EmptyPayload
    assert spec.timeout == constants.DEFAULT_JOB_TIMEOUT
    with pytest.raises(PayloadInvalid):
        spec.validate({"unexpected": 1})


def test_validation_reports_every_field_error() -> None:
    registry = Registry()
    registry.job("email.send", payload=Email)(lambda payload, ctx: None)
    with pytest.raises(PayloadInvalid) as caught:
        registry.get("email.send").validate({"to": 5})
    assert {e["field"] for e in caught.value.errors} == {"to", "subject"}


def test_unknown_type_names_the_known_ones() -> None:
    registry = Registry()
    registry.job("a")(lambda payload, ctx: None)
    with pytest.raises(UnknownJobType) as caught:
        registry.get("b")
    assert caught.value.known == ["a"]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("Bad Name", {}),
        ("", {}),
        ("ok", {"timeout": 0}),
        ("ok", {"timeout": 1.5}),
        ("ok", {"max_retries": -1}),
    ],
)
def test_invalid_registrations_are_refused(name: str, options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        Registry().job(name, **options)  # type: ignore[arg-type]


def test_a_name_is_registered_once() -> None:
    registry = Registry()
    registry.job("dup")(lambda payload, ctx: None)
    with pytest.raises(ValueError, match="twice"):
        registry.job("dup")


def test_a_payload_model_named_by_import_string_is_imported_on_first_use() -> None:
    registry = Registry()
    registry.job("nap", payload="service.dev.demo_payloads:SleepPayload")(lambda payload, ctx: None)
    spec = registry.get("nap")
    assert spec.payload == "service.dev.demo_payloads:SleepPayload"
    assert spec.model().__name__ == "SleepPayload"
    assert spec.validate({"seconds": 2}).seconds == 2  # type: ignore[union-attr]
    with pytest.raises(PayloadInvalid):
        spec.validate({"seconds": -1})


def test_a_wrong_import_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 'module:Model'"):
        Registry().job("nap", payload="service.dev.demo_payloads.SleepPayload")
    registry = Registry()
    registry.job("nap", payload="service.dev.demo_payloads:Nothing")(lambda payload, ctx: None)
    with pytest.raises(ImportError, match="not a pydantic model"):
        registry.get("nap").model()


class Empty(BaseModel):
    """The payload of a job type that takes none: `{}`."""

    model_config = ConfigDict(extra="forbid", title="EmptyPayload")


@pytest.mark.parametrize("payload", [{}, {"a": 1, "b": {"c": 2}}, None, "x", [], 5])
def test_the_empty_payload_is_checked_as_pydantic_would(payload: object) -> None:
    """EmptyPayload is not a pydantic model (workers need no pydantic for it), but the API
    describes and checks it as it would one."""
    registry = Registry()
    registry.job("none")(lambda payload, ctx: None)
    registry.job("model", payload=Empty)(lambda payload, ctx: None)

    def errors(name: str, strict: bool) -> list[dict[str, object]]:
        try:
            registry.get(name).validate(payload, strict=strict)
        except PayloadInvalid as exc:
            return exc.errors
        return []

    assert errors("none", strict=True) == errors("model", strict=True)  # as the API answers
    lax = [[e["field"] for e in errors(name, strict=False)] for name in ("none", "model")]
    assert lax[0] == lax[1]  # as the worker checks a job published by other tools
    assert registry.get("none").json_schema() == Empty.model_json_schema()


def registered(handler_modules: str) -> list[str]:
    """The job types a fresh process registers with HANDLER_MODULES set so."""
    code = (
        "from service.config.settings import load; from service.jobs import registry; "
        f"print(','.join(registry.load(load({{'HANDLER_MODULES': {handler_modules!r}}})"
        ".handler_modules).names()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_a_production_registry_holds_only_the_applications_job_types() -> None:
    assert registered("") == []
    assert registered("tests.lean_handlers") == ["test.modules"]
    assert registered("service.dev.demo") == ["echo", "fail", "noop", "sleep"]
