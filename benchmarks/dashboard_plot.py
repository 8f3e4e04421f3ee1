"""Draw deploy/grafana/dashboard.json's main panels from the samples benchmarks/dashboard.py
scraped (benchmarks/dashboard_data.py evaluates the queries). Needs matplotlib: the `plot`
extra (`.venv/bin/pip install -e '.[plot]'`), never a dependency of the service."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    PercentFormatter,
)
from PIL import Image  # comes with matplotlib

from benchmarks.dashboard_data import (
    KILL_COLOR,
    PHASE_COLORS,
    RATE_WINDOW,
    Curves,
    Panels,
    Run,
    load,
)


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    curves: Callable[[Panels], Curves]
    unit: str  # short | s | ops | reqps | percent
    log: bool = False


# Grafana rows, each a list of panels drawn side by side (their titles are the dashboard's).
ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Backlog",
        (
            Panel("Waiting jobs by queue and priority", Panels.waiting, "short"),
            Panel(
                "Due, scheduled and running jobs by queue", Panels.due_scheduled_running, "short"
            ),
        ),
    ),
    (
        "",
        (
            Panel("Oldest waiting job age", Panels.oldest, "s"),
            Panel("Jobs in progress", Panels.in_progress, "short"),
        ),
    ),
    (
        "Throughput",
        (
            Panel(
                "Jobs started (dotted) and finished per second by type", Panels.throughput, "ops"
            ),
            Panel("Other outcomes per second by type", Panels.other_outcomes, "ops"),
        ),
    ),
    (
        "Failures",
        (
            Panel("Failed attempts per second by type and reason", Panels.failed, "ops"),
            Panel("Failure ratio by type", Panels.failure_ratio, "percent"),
        ),
    ),
    (
        "Job latency",
        (
            Panel(
                "Job duration (p50, p95, p99)",
                lambda p: p.quantiles("service_job_duration_seconds"),
                "s",
                log=True,
            ),
            Panel(
                "Queue wait (p50, p95, p99)",
                lambda p: p.quantiles("service_job_queue_wait_seconds"),
                "s",
                log=True,
            ),
        ),
    ),
    (
        "Workers and dead letters",
        (
            Panel("Worker processes alive", Panels.workers, "short"),
            Panel("Worker process restarts (total)", Panels.restarts, "short"),
            Panel("Dead-letter queue size", Panels.dead_letters, "short"),
        ),
    ),
    (
        "API",
        (
            Panel("Requests per second by status", Panels.requests, "reqps"),
            Panel(
                "Publish latency (p50, p95, p99)",
                lambda p: p.quantiles("service_publish_duration_seconds"),
                "s",
                log=True,
            ),
            Panel("Jobs accepted per second by type and priority", Panels.accepted, "ops"),
        ),
    ),
)
DPI = 72
YLABELS = {"short": "", "s": "", "ops": "jobs/s", "reqps": "requests/s", "percent": ""}


def _seconds(value: float, _: object = None) -> str:
    if value <= 0:
        return "0"
    if value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def render(csv_path: Path, png_path: Path) -> None:
    run = load(csv_path)
    panels = Panels(run)
    x = [t - run.start for t in panels.grid]
    with matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold"}):
        figure = _draw(run, panels, x)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    # A 256-colour palette: a third of the size, and these flat colours lose nothing.
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(png_path, optimize=True)


def _draw(run: Run, panels: Panels, x: list[float]) -> Figure:
    figure = Figure(figsize=(15, 24))  # no pyplot: no global figure state, no display backend
    _title(figure, run)
    stats = figure.add_gridspec(1, 6, left=0.05, right=0.985, top=0.935, bottom=0.895, wspace=0.25)
    for column, (value, label) in enumerate(panels.stats()):
        _stat(figure.add_subplot(stats[0, column]), value, label)
    strip = figure.add_gridspec(1, 1, left=0.05, right=0.985, top=0.87, bottom=0.85)
    _timeline(figure.add_subplot(strip[0, 0]), run, x[-1])
    layout = figure.add_gridspec(
        len(ROWS), 6, left=0.05, right=0.985, top=0.81, bottom=0.045, hspace=0.8, wspace=0.5
    )
    for row, (header, row_panels) in enumerate(ROWS):
        width = 6 // len(row_panels)
        for index, panel in enumerate(row_panels):
            axes = figure.add_subplot(layout[row, index * width : (index + 1) * width])
            _panel(axes, panel, panel.curves(panels), x, run, columns=8 // len(row_panels))
            if header and index == 0:
                top = axes.get_position().y1
                figure.text(
                    0.008, top + 0.016, header, fontsize=13, fontweight="bold", color="#212529"
                )
    return figure


def _title(figure: Figure, run: Run) -> None:
    meta = run.meta
    figure.suptitle(
        f"Job service dashboard from a {run.end - run.start:.0f} s demo run: "
        f"{meta.get('cpus', '?')} CPUs (nproc), {meta.get('cpu_model', '?')}, "
        f"{meta.get('date', '?')}",
        fontsize=16,
        fontweight="bold",
        y=0.99,
    )
    lines = (
        "benchmarks/dashboard.py: one API process and one worker container "
        f"(WORKER_CONCURRENCY={meta.get('concurrency', '?')}, "
        f"WORKER_PROCESSING_INTERVAL={meta.get('interval_ms', '?')}) on a private redis-server;",
        f"both /metrics endpoints scraped every {meta.get('scrape_seconds', '?')} s, drawn with "
        f"the queries of deploy/grafana/dashboard.json (rates over {RATE_WINDOW:g} s).",
    )
    figure.text(0.5, 0.957, "\n".join(lines), ha="center", fontsize=11, color="#495057")


def _stat(axes: Axes, value: str, label: str) -> None:
    axes.set_axis_off()
    axes.add_patch(
        FancyBboxPatch(
            (0, 0),
            1,
            1,
            boxstyle="round,pad=0,rounding_size=0.05",
            transform=axes.transAxes,
            facecolor="#f1f3f5",
            edgecolor="#ced4da",
        )
    )
    axes.text(0.5, 0.62, value, ha="center", va="center", fontsize=15, fontweight="bold")
    axes.text(0.5, 0.22, label, ha="center", va="center", fontsize=9, color="#495057")


def _phase_spans(run: Run) -> list[tuple[float, float, str]]:
    edges = [t - run.start for t, _ in run.phases] + [run.end - run.start]
    return [(edges[i], edges[i + 1], name) for i, (_, name) in enumerate(run.phases)]


def _timeline(axes: Axes, run: Run, end: float) -> None:
    for start, stop, name in _phase_spans(run):
        axes.axvspan(start, stop, color=PHASE_COLORS.get(name, "#f8f9fa"), ec="#868e96")
        if stop - start >= 0.08 * end:  # a name that fits
            axes.text((start + stop) / 2, 0.5, name, ha="center", va="center", fontsize=10.5)
    for kill in run.kills:
        axes.axvline(kill - run.start, color=KILL_COLOR, linestyle="--", linewidth=1.5)
        axes.annotate(
            "SIGKILL of one worker process",
            (kill - run.start, 0.0),
            xytext=(0, -3),
            textcoords="offset points",
            ha="center",
            va="top",
            color=KILL_COLOR,
            fontsize=9.5,
            fontweight="bold",
        )
    axes.set_xlim(0, end)
    axes.set_ylim(0, 1)
    axes.set_yticks([])
    axes.set_xticks([])
    axes.set_title(
        "Load phases (every panel's time axis: seconds since the load started)", loc="left", pad=4
    )


def _panel(
    axes: Axes, panel: Panel, curves: Curves, x: list[float], run: Run, columns: int
) -> None:
    for start, stop, name in _phase_spans(run):
        if name in PHASE_COLORS:
            axes.axvspan(start, stop, color=PHASE_COLORS[name], alpha=0.45, lw=0)
    for kill in run.kills:
        axes.axvline(kill - run.start, color=KILL_COLOR, linestyle="--", linewidth=1)
    axes.margins(x=0, y=0.15)  # keeps a line at its maximum off the frame
    for label, (values, style) in curves.items():
        axes.plot(x, values, label=label, **{"linewidth": 1.4, **style})  # type: ignore[arg-type]
    axes.set_title(panel.title, loc="left")
    axes.set_xlim(0, x[-1])
    axes.grid(True, color="#dee2e6", linewidth=0.6)
    axes.set_ylabel(YLABELS[panel.unit])
    _y_axis(axes, panel)
    if not curves:
        axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", color="#868e96")
        return
    axes.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.11),
        ncol=min(columns, len(curves)),
        fontsize=8.5,
        frameon=False,
        handlelength=2.4,
        columnspacing=1.4,
        borderaxespad=0,
    )


def _y_axis(axes: Axes, panel: Panel) -> None:
    if panel.log:
        axes.set_yscale("log")
        low, high = axes.get_ylim()
        crowded = high / low > 300  # past 2.5 decades, 1-2-5 ticks would touch each other
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0,) if crowded else (1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FuncFormatter(_seconds))
        axes.yaxis.set_minor_formatter(NullFormatter())
        return
    axes.set_ylim(bottom=0)
    if panel.unit == "s":
        axes.yaxis.set_major_formatter(FuncFormatter(_seconds))
    elif panel.unit == "percent":
        axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    else:
        axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=panel.unit == "short"))
