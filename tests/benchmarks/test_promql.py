"""benchmarks/promql.py: the dashboard picture's figures are computed the way Prometheus
computes them (histogram_quantile's interpolation, counter resets, max across targets)."""

from __future__ import annotations

import math

import pytest

from benchmarks import promql
from benchmarks.promql import Samples, histogram_quantile

INF = math.inf


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.3),  # rank 20 falls in (0.1, 0.5], halfway through its 20 observations
        (0.99, 0.98),  # rank 39.6 in (0.5, 1], 9.6 of its 10
        (0.25, 0.1),  # rank 10: exactly the first bucket's count
        (0.1, 0.04),  # first bucket: interpolated from 0
    ],
)
def test_histogram_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, INF: 40.0}
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, {0.1: 1.0, 1.0: 2.0, INF: 10.0}) == 1.0


def test_histogram_quantile_without_observations_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.5, {0.1: 0.0, INF: 0.0}))
    assert math.isnan(histogram_quantile(0.5, {0.1: 3.0}))  # no +Inf bucket


def test_histogram_quantile_fixes_non_monotonic_rates() -> None:
    # Summed rates of separate series can dip by rounding; Prometheus takes the running max.
    assert histogram_quantile(0.5, {0.1: 10.0, 0.5: 9.0, INF: 20.0}) == pytest.approx(0.1)


def test_rate_reads_a_drop_as_a_counter_reset() -> None:
    samples = Samples()
    for t, value in enumerate([0.0, 10.0, 20.0, 5.0, 15.0]):
        samples.add_scrape("worker", float(t), [("jobs_total", {"type": "a"}, value)])
    # 10 + 10 + 5 (after the reset) + 10 over the 4 s between the first and last sample
    assert promql.rate(samples, "jobs_total", 4.0, 10.0) == {(): pytest.approx(35 / 4)}
    increase = promql.rate(samples, "jobs_total", 4.0, 2.0, per_second=False)
    # samples in (2, 4]: +10 in 1 s, extrapolated to the 2 s window as increase() does
    assert increase == {(): pytest.approx(20.0)}


def test_a_counter_born_between_scrapes_counts_from_zero() -> None:
    samples = Samples()
    samples.add_scrape("api", 0.0, [("other_total", {}, 1.0)])
    samples.add_scrape("api", 1.0, [("other_total", {}, 1.0), ("failed_total", {"r": "x"}, 3.0)])
    assert promql.rate(samples, "failed_total", 1.0, 5.0, by=("r",)) == {("x",): 3.0}


def test_gauges_exported_by_several_targets_aggregate_with_max() -> None:
    samples = Samples()
    samples.add_scrape("api", 0.0, [("waiting", {"queue": "q", "priority": "low"}, 7.0)])
    samples.add_scrape("worker", 0.2, [("waiting", {"queue": "q", "priority": "low"}, 9.0)])
    assert promql.instant(samples, "waiting", 1.0, by=("queue",), how="max") == {("q",): 9.0}
    assert promql.instant(samples, "waiting", 1.0, by=("queue",)) == {("q",): 16.0}
    assert promql.instant(samples, "waiting", 10.0, by=("queue",)) == {}  # stale


def test_quantile_over_rate_sums_buckets_by_le() -> None:
    samples = Samples()
    for t, scale in ((0.0, 0.0), (1.0, 1.0)):
        rows = [
            ("d_bucket", {"type": job, "le": le}, count * scale)
            for job in ("a", "b")
            for le, count in (("0.1", 5.0), ("1.0", 10.0), ("+Inf", 10.0))
        ]
        samples.add_scrape("worker", t, rows)
    # both types: 10 of 20 observations per second at or below 0.1 s
    assert promql.quantile_over_rate(samples, 0.5, "d", 1.0, 5.0) == pytest.approx(0.1)
