"""The registry: one table of job types, with payload schemas and policies."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from service import constants
from service.context import JobContext
from service.registry import EmptyPayload, PayloadInvalid, Registry, UnknownJobType


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
