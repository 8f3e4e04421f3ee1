"""Retry backoff arithmetic (pure)."""

from __future__ import annotations

import random

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from service.jobs.policy import Backoff


def test_fixed_waits_base_every_time() -> None:
    backoff = Backoff(type="fixed", base=5, jitter=False)
    assert [backoff.delay(n) for n in (1, 2, 10)] == [5, 5, 5]


def test_exponential_doubles_up_to_the_cap() -> None:
    backoff = Backoff(type="exponential", base=1, cap=10, jitter=False)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff.delay(10_000) == 10  # no overflow on huge attempt numbers


def test_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    backoff = Backoff(type="exponential", base=2, cap=100, jitter=True)
    rng = random.Random(7)
    draws = [backoff.delay(3, rng) for _ in range(1000)]
    assert all(0 <= d <= 8 for d in draws)
    assert max(draws) > 7 and min(draws) < 1  # spread over the whole range


BAD = [{"type": "linear"}, {"base": -1}, {"cap": 10**9}, {"x": 1}, {"base": "5"}, {"jitter": 1}]


@pytest.mark.parametrize("bad", BAD)
def test_invalid_policies_are_refused_by_the_api(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):  # as POST /jobs validates it: strictly, from JSON
        TypeAdapter(Backoff).validate_json(orjson.dumps(bad), strict=True)


@pytest.mark.parametrize("bad", BAD)
def test_invalid_policies_are_refused_in_python(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):  # as a handler module's @job(backoff=...)
        Backoff(**bad)  # type: ignore[arg-type]


def test_a_policy_travels_as_json() -> None:
    backoff = Backoff(type="fixed", base=5, jitter=False)
    assert backoff.to_json() == '{"type":"fixed","base":5.0,"cap":300.0,"jitter":false}'
    assert Backoff.from_json(backoff.to_json()) == backoff
