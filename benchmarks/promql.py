"""The few PromQL operations the Grafana dashboard uses, evaluated over scraped samples.

benchmarks/dashboard.py scrapes /metrics itself (no Prometheus runs here); this module turns
those samples into the series the dashboard's panels would show: instant values of gauges,
`rate`/`increase` of counters over a window, `sum by`/`max by` aggregation, and
`histogram_quantile` with Prometheus' own interpolation. Pure Python, no plotting.

Two deliberate differences from Prometheus, both small at a 1 s scrape interval:
- `rate` is the increase between the first and last sample in the window divided by the time
  between them; Prometheus extrapolates both ends to the window's edges, which gives the same
  figure on average.
- A counter series that appears between two scrapes (prometheus_client creates a labelled
  child on its first increment) counts from 0 at the scrape before; Prometheus has no sample
  before the first and would miss that first increase.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable
Key = tuple[str, ...]  # the values of the `by` labels, in the order given
Vector = dict[Key, float]  # one instant: group -> value
Matcher = Callable[[Mapping[str, str]], bool]

COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
NAN = math.nan


def labels_of(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


@dataclass(slots=True)
class Series:
    source: str
    name: str
    labels: dict[str, str]
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def at(self, t: float, lookback: float) -> float | None:
        """The last value at or before t, if no older than `lookback` (Prometheus' staleness)."""
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0 or t - self.times[i] > lookback:
            return None
        return self.values[i]

    def increase(self, start: float, end: float) -> tuple[float, float] | None:
        """(increase, seconds between first and last sample) over samples in (start, end];
        a drop is a counter reset (the process restarted), as Prometheus reads it."""
        lo = bisect.bisect_right(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        if hi - lo < 2:
            return None
        total = 0.0
        for previous, value in zip(self.values[lo : hi - 1], self.values[lo + 1 : hi], strict=True):
            total += value - previous if value >= previous else value
        return total, self.times[hi - 1] - self.times[lo]


class Samples:
    """Every scraped sample, as Prometheus would store them: one series per source (scrape
    target), metric name and label set."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, Labels], Series] = {}
        self._by_name: dict[str, list[Series]] = defaultdict(list)
        self._scrapes: dict[str, list[float]] = defaultdict(list)  # scrape times per source

    def add_scrape(
        self, source: str, t: float, rows: Iterable[tuple[str, dict[str, str], float]]
    ) -> None:
        """One scrape of `source` at time t: (name, labels, value) rows."""
        scrapes = self._scrapes[source]
        for name, labels, value in rows:
            key = (source, name, labels_of(labels))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(source, name, dict(labels))
                self._by_name[name].append(series)
                if scrapes and name.endswith(COUNTER_SUFFIXES):
                    series.times.append(scrapes[-1])  # born since the last scrape: from 0
                    series.values.append(0.0)
            series.times.append(t)
            series.values.append(value)
        scrapes.append(t)

    def select(self, name: str, where: Matcher | None = None) -> list[Series]:
        return [s for s in self._by_name.get(name, []) if where is None or where(s.labels)]

    def names(self) -> set[str]:
        return set(self._by_name)


def _group(labels: Mapping[str, str], by: Sequence[str]) -> Key:
    return tuple(labels.get(name, "") for name in by)


def _aggregate(pairs: Iterable[tuple[Key, float]], how: str) -> Vector:
    out: Vector = {}
    for key, value in pairs:
        if key not in out:
            out[key] = value
        elif how == "sum":
            out[key] += value
        else:
            out[key] = max(out[key], value)
    return out


def instant(
    samples: Samples,
    name: str,
    t: float,
    by: Sequence[str] = (),
    how: str = "sum",
    where: Matcher | None = None,
    lookback: float = 3.0,
) -> Vector:
    """`how by (by) (name{where})` at time t (how: sum or max)."""
    pairs = []
    for series in samples.select(name, where):
        value = series.at(t, lookback)
        if value is not None:
            pairs.append((_group(series.labels, by), value))
    return _aggregate(pairs, how)


def rate(
    samples: Samples,
    name: str,
    t: float,
    window: float,
    by: Sequence[str] = (),
    where: Matcher | None = None,
    per_second: bool = True,
) -> Vector:
    """`sum by (by) (rate(name{where}[window]))` at time t; `increase` with per_second=False."""
    pairs = []
    for series in samples.select(name, where):
        found = series.increase(t - window, t)
        if found is None:
            continue
        increase, span = found
        if per_second:
            if span <= 0:
                continue
            pairs.append((_group(series.labels, by), increase / span))
        else:  # increase() extrapolates to the whole window
            pairs.append((_group(series.labels, by), increase * window / span if span else 0.0))
    return _aggregate(pairs, "sum")


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper bound -> count),
    which must include +Inf: linear interpolation inside the bucket the rank falls in; the
    highest finite bound when it falls in +Inf; NaN without observations."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return NAN
    counts: list[float] = []
    for bound in bounds:  # rates of separate series can be slightly non-monotonic: fix as it does
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    observations = counts[-1]
    if observations <= 0:
        return NAN
    rank = q * observations
    b = bisect.bisect_left(counts, rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count) if count > 0 else end


def quantile_over_rate(
    samples: Samples,
    q: float,
    name: str,
    t: float,
    window: float,
    where: Matcher | None = None,
) -> float:
    """`histogram_quantile(q, sum by (le) (rate(name_bucket{where}[window])))` at time t."""
    per_le = rate(samples, f"{name}_bucket", t, window, by=("le",), where=where)
    return histogram_quantile(q, {float(le): value for (le,), value in per_le.items()})
