"""Retry backoff arithmetic (pure)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from service.policy import Backoff


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


@pytest.mark.parametrize("bad", [{"type": "linear"}, {"base": -1}, {"cap": 10**9}, {"x": 1}])
def test_invalid_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Backoff.model_validate(bad)
