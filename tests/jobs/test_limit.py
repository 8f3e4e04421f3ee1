"""Limit: `@job`'s rate and concurrency limits, read, checked and written as the scripts read
them."""

from __future__ import annotations

import pytest

from service.jobs.limit import Limit, LimitInvalid, Rate
from service.jobs.registry import Registry


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("20/second", Rate(20, 1)),
        ("100/minute", Rate(100, 60)),
        ("5/hour", Rate(5, 3600)),
        ("1000/day", Rate(1000, 86400)),
    ],
)
def test_a_rate_reads_n_per_period(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize(
    "text", ["20", "0/second", "20/fortnight", "-1/minute", "x/hour", "7/s", " 1/second"]
)
def test_a_rate_that_cannot_be_read_names_its_field(text: str) -> None:
    with pytest.raises(LimitInvalid) as caught:
        Rate.parse(text)
    assert caught.value.field == "rate_limit"


def test_a_limit_round_trips_through_its_stored_form() -> None:
    limit = Limit.of("100/minute", 5, "customer_id")
    assert limit is not None
    assert limit.encode() == "100/60/5/customer_id"
    assert Limit.decode(limit.encode()) == limit
    assert Limit.decode("garbage") is None
    assert limit.as_json() == {
        "rate_limit": "100/minute",
        "concurrency_limit": 5,
        "limit_key": "customer_id",
    }


def test_no_limit_is_none_and_a_key_alone_is_refused() -> None:
    assert Limit.of(None, None, None) is None
    with pytest.raises(LimitInvalid, match="limit_key"):
        Limit.of(None, None, "customer_id")
    with pytest.raises(LimitInvalid, match="concurrency_limit"):
        Limit.of(None, 0, None)
    with pytest.raises(LimitInvalid, match="limit_key"):
        Limit.of("1/second", None, "a.b")


def test_job_takes_the_limits_and_refuses_a_bad_one_at_import() -> None:
    registry = Registry()
    registry.job("limited", rate_limit="20/second", concurrency_limit=5, limit_key="tenant")(
        lambda payload, ctx: None
    )
    assert registry.get("limited").limit == Limit(Rate(20, 1), 5, "tenant")
    with pytest.raises(ValueError, match="job type 'bad': rate_limit"):
        registry.job("bad", rate_limit="often")
