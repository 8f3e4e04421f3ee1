"""The Grafana dashboard's queries evaluated over what benchmarks/dashboard.py scraped (its
CSV): one curve per legend entry, with its line style, for benchmarks/dashboard_plot.py."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import promql
from benchmarks.promql import Samples

RATE_WINDOW = 5.0  # seconds: Grafana's $__rate_interval at a 1 s scrape is 4 s or more
STEP = 1.0  # seconds between evaluated points
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
TYPE_COLORS = {
    "demo.work": "#1f77b4",
    "demo.import": "#ff7f0e",
    "demo.flaky": "#2ca02c",
    "demo.slow": "#9467bd",
}
PRIORITY_COLORS = {"high": "#d62728", "default": "#1f77b4", "low": "#ff7f0e"}
QUANTILE_COLORS = {"p50": "#2ca02c", "p95": "#ff7f0e", "p99": "#d62728"}
PHASE_COLORS = {
    "bulk import": "#ffd8a8",
    "drain": "#d0ebff",
    "outage": "#ffc9c9",
    "recovery": "#d3f9d8",
    "load stopped": "#e9ecef",
}
KILL_COLOR = "#c92a2a"


@dataclass(slots=True)
class Run:
    """What the CSV holds: the samples, and the run's events."""

    samples: Samples = field(default_factory=Samples)
    meta: dict[str, str] = field(default_factory=dict)
    phases: list[tuple[float, str]] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    end: float = 0.0

    @property
    def start(self) -> float:
        return self.phases[0][0] if self.phases else 0.0

    def grid(self) -> list[float]:
        """Evaluation times, every STEP from the first phase to the end."""
        count = int((self.end - self.start) / STEP) + 1
        return [self.start + i * STEP for i in range(count)]


def load(path: Path) -> Run:
    run = Run()
    scrape: dict[tuple[str, str], list[tuple[str, dict[str, str], float]]] = {}
    with open(path, newline="") as source:
        for row in csv.DictReader(source):
            t, labels = float(row["t"]), json.loads(row["labels"])
            if row["source"] == "run":
                _event(run, row["name"], t, labels)
            else:
                scrape.setdefault((row["source"], row["t"]), []).append(
                    (row["name"], labels, float(row["value"]))
                )
    for (where, at), rows in sorted(scrape.items(), key=lambda item: float(item[0][1])):
        run.samples.add_scrape(where, float(at), rows)
    return run


def _event(run: Run, name: str, t: float, labels: dict[str, str]) -> None:
    if name == "meta":
        run.meta = labels
    elif name == "phase":
        run.phases.append((t, labels["phase"]))
    elif name == "sigkill":
        run.kills.append(t)
    elif name == "end":
        run.end = t


# --- what each panel plots -----------------------------------------------------------------

Curves = dict[str, tuple[list[float], dict[str, object]]]  # legend -> (values, line style)


def _by_type(key: str, suffix: str = "") -> tuple[str, dict[str, object]]:
    color = TYPE_COLORS.get(key, "#495057")
    return f"{key}{suffix}", {"color": color}


class Panels:
    """The dashboard's queries evaluated over the run's grid."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.s = run.samples
        self.grid = run.grid()

    def _series(
        self, at: Callable[[float], Mapping[tuple[str, ...], float]]
    ) -> dict[tuple[str, ...], list[float]]:
        values = [at(t) for t in self.grid]
        keys = sorted({key for vector in values for key in vector})
        return {key: [vector.get(key, math.nan) for vector in values] for key in keys}

    def gauge(
        self, name: str, by: Sequence[str] = (), how: str = "max"
    ) -> dict[tuple[str, ...], list[float]]:
        """`max by (by) (name)`: several processes export the same backlog figures."""
        return self._series(lambda t: promql.instant(self.s, name, t, by, how))

    def total(self, name: str) -> list[float]:
        """`sum(name)`, NaN where nothing was scraped."""
        return self.gauge(name, how="sum").get((), [math.nan] * len(self.grid))

    def rate(self, name: str, by: Sequence[str] = ()) -> dict[tuple[str, ...], list[float]]:
        return self._series(lambda t: promql.rate(self.s, name, t, RATE_WINDOW, by))

    def quantiles(self, name: str) -> Curves:
        return {
            label: (
                [promql.quantile_over_rate(self.s, q, name, t, RATE_WINDOW) for t in self.grid],
                {"color": QUANTILE_COLORS[label]},
            )
            for q, label in QUANTILES
        }

    # one method per panel, named after its title
    def waiting(self) -> Curves:
        series = self.gauge("service_queue_waiting_jobs", ("queue", "priority"))
        return {
            f"{queue} {priority}": (values, {"color": PRIORITY_COLORS.get(priority)})
            for (queue, priority), values in series.items()
        }

    def due_scheduled_running(self) -> Curves:
        curves: Curves = {}
        for figure, color in (("due", "#f08c00"), ("scheduled", "#7048e8"), ("running", "#1c7ed6")):
            for (queue,), values in self.gauge(f"service_queue_{figure}_jobs", ("queue",)).items():
                curves[f"{queue} {figure}"] = (values, {"color": color})
        return curves

    def oldest(self) -> Curves:
        series = self.gauge("service_queue_oldest_job_age_seconds", ("queue",))
        return {queue: (values, {"color": "#e8590c"}) for (queue,), values in series.items()}

    def in_progress(self) -> Curves:
        return {"worker": (self.total("service_jobs_in_progress"), {"color": "#1c7ed6"})}

    def throughput(self) -> Curves:
        curves: Curves = {}
        started = self.rate("service_jobs_started_total", ("type",))
        for (job_type,), values in self.rate("service_jobs_finished_total", ("type",)).items():
            label, style = _by_type(job_type, " finished")
            curves[label] = (values, style)
        for (job_type,), values in started.items():
            label, style = _by_type(job_type, " started")
            curves[label] = (values, {**style, "linestyle": ":", "linewidth": 1.6})
        return curves

    def other_outcomes(self) -> Curves:
        curves: Curves = {}
        for outcome, dash in (("retried", "-"), ("dead", "--"), ("interrupted", ":")):
            for (job_type,), values in self.rate(
                f"service_jobs_{outcome}_total", ("type",)
            ).items():
                label, style = _by_type(job_type, f" {outcome}")
                curves[label] = (values, {**style, "linestyle": dash})
        return curves

    def failed(self) -> Curves:
        dashes = {"exception": "-", "timeout": "--", "worker_lost": ":"}
        curves: Curves = {}
        series = self.rate("service_jobs_failed_total", ("type", "reason"))
        for (job_type, reason), values in series.items():
            label, style = _by_type(job_type, f" {reason}")
            curves[label] = (values, {**style, "linestyle": dashes.get(reason, "-.")})
        return curves

    def failure_ratio(self) -> Curves:
        failed = self.rate("service_jobs_failed_total", ("type",))
        started = self.rate("service_jobs_started_total", ("type",))
        curves: Curves = {}
        for (job_type,), values in started.items():
            fails = failed.get((job_type,), [math.nan] * len(values))
            ratio = [
                (f if not math.isnan(f) else 0.0) / s if s > 0 else math.nan
                for f, s in zip(fails, values, strict=True)
            ]
            label, style = _by_type(job_type)
            curves[label] = (ratio, style)
        return curves

    def workers(self) -> Curves:
        alive = self.total("service_worker_processes")
        serving = self.gauge("service_queue_workers", ("queue",))
        curves: Curves = {"processes alive": (alive, {"color": "#1c7ed6", "linewidth": 3})}
        for (queue,), values in serving.items():
            curves[f"serving {queue}"] = (values, {"color": "#f08c00", "linestyle": "--"})
        return curves

    def restarts(self) -> Curves:
        """The counter itself: a step is clearer in a picture than Grafana's increase bump."""
        return {
            "restarts so far": (
                self.total("service_worker_process_restarts_total"),
                {"color": KILL_COLOR},
            )
        }

    def dead_letters(self) -> Curves:
        series = self.gauge("service_queue_dead_jobs", ("queue",))
        return {queue: (values, {"color": "#c92a2a"}) for (queue,), values in series.items()}

    def requests(self) -> Curves:
        colors = {"200": "#1c7ed6", "202": "#2f9e44", "422": "#f08c00"}
        series = self.rate("service_http_requests_total", ("status",))
        return {
            status: (values, {"color": colors.get(status, "#c92a2a")})
            for (status,), values in series.items()
        }

    def accepted(self) -> Curves:
        dashes = {"high": "--", "default": "-", "low": ":"}
        series = self.rate("service_jobs_accepted_total", ("type", "priority"))
        return {
            f"{job_type} {priority}": (
                values,
                {**_by_type(job_type)[1], "linestyle": dashes.get(priority, "-")},
            )
            for (job_type, priority), values in series.items()
        }

    def stats(self) -> list[tuple[str, str]]:
        """The overview row: (figure, label) per stat box, over the whole run."""
        waiting = self.gauge("service_queue_waiting_jobs", ("queue", "priority"))
        due = self.gauge("service_queue_due_jobs", ("queue",))
        backlog = _combine([*waiting.values(), *due.values()], sum)
        oldest = _combine(
            self.gauge("service_queue_oldest_job_age_seconds", ("queue",)).values(), max
        )
        running = self.total("service_jobs_in_progress")
        alive = self.total("service_worker_processes")
        dead = _combine(self.gauge("service_queue_dead_jobs", ("queue",)).values(), sum)
        failed = self._run_total("service_jobs_failed_total")
        started = self._run_total("service_jobs_started_total")
        ratio = f"{failed / started:.1%}" if started else "-"
        return [
            (f"peak {_max(backlog):,.0f}", "Backlog (waiting + due)"),
            (f"peak {_max(oldest):.1f} s", "Oldest waiting job"),
            (f"max {_max(running):.0f}", "Jobs running"),
            (f"min {_min(alive):.0f}, end {_last(alive):.0f}", "Worker processes"),
            (ratio, f"Failure ratio ({failed:,.0f} of {started:,.0f} attempts)"),
            (f"end {_last(dead):,.0f}", "Dead jobs"),
        ]

    def _run_total(self, name: str) -> float:
        """A counter's final value, summed: the processes started with the run, from 0."""
        return sum(promql.instant(self.s, name, self.run.end, lookback=math.inf).values())


def _combine(curves: Iterable[list[float]], how: Callable[[list[float]], float]) -> list[float]:
    """Point by point `sum` or `max` of several curves, ignoring their gaps."""
    rows = list(curves)
    return [how(_known(list(column)) or [math.nan]) for column in zip(*rows, strict=True)]


def _known(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _max(values: list[float]) -> float:
    return max(_known(values), default=math.nan)


def _min(values: list[float]) -> float:
    return min(_known(values), default=math.nan)


def _last(values: list[float]) -> float:
    known = _known(values)
    return known[-1] if known else math.nan
