"""The Markdown report of a run: the machine, the main table, then each phase's own section."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata

from benchmarks.common import DB_APP, cpu_model, load_average
from benchmarks.harness import DEFAULTS, Bench
from benchmarks.redis_meter import RedisCost

# Which publish and drain runs make up "one job, end to end" for the Redis sizing line.
END_TO_END = (
    (
        "service, `POST /jobs` then drained at defaults",
        "publish: POST /jobs, service",
        f"drain: {DEFAULTS}",
    ),
    (
        "service, `POST /jobs/batch` then drained at defaults",
        "publish: POST /jobs/batch x 1000, service",
        f"drain: {DEFAULTS}",
    ),
    (
        "RQ, `enqueue` then a `SimpleWorker`",
        "publish: Starlette + RQ enqueue",
        "drain: RQ SimpleWorker",
    ),
    (
        "RQ, `enqueue_many` then a `SimpleWorker`",
        "publish: RQ enqueue_many x 1000",
        "drain: RQ SimpleWorker",
    ),
)


def machine(bench: Bench) -> list[str]:
    info = bench.db(DB_APP).info("server")
    versions = []
    for package in ("rq", "redis", "starlette", "uvicorn", "uvloop", "httptools"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return [
        f"- Machine: {len(os.sched_getaffinity(0))} CPUs (nproc), {cpu_model()}; "
        f"{platform.system()} {platform.release()}; load average (1, 5, 15 min) "
        f"{bench.load_at_start} at the start, {load_average()} at the end",
        f"- Redis {info['redis_version']} (private redis-server, shared by every figure); "
        f"Python {platform.python_version()}; {', '.join(versions)}",
        f"- HTTP load generator: {bench.generator_note}",
        f"- Command: {' '.join(sys.argv)}",
    ]


def redis_cost_section(costs: dict[str, RedisCost]) -> list[str]:
    if not costs:
        return []
    lines = [
        "## Redis CPU per job",
        "",
        "From `INFO cpu` (used_cpu_sys + used_cpu_user) and `INFO commandstats` before and after "
        "each run (our own INFO calls removed; the benchmark's 50 ms progress polls are "
        "included, a few per second). CPU time counts what commandstats cannot: reading, "
        "parsing and answering each round trip. Commandstats times are wall-clock inside "
        "Redis: on a busy machine they include time redis-server waited for a core, so they "
        "show where the time goes, not how much CPU it took.",
        "",
        "| run | Redis CPU per job, µs | commands per job | one Redis core sustains, jobs/s | "
        "Redis time by command, per job (calls, µs; a script's time includes its calls) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {c.cpu_us_per_job:.1f} | {c.commands_per_job:.1f} | {c.jobs_per_core:,.0f} "
        f"| {c.top_commands(4)} |"
        for name, c in costs.items()
    ]
    whole = []
    for label, publish, drain in END_TO_END:
        if publish in costs and drain in costs:
            us = costs[publish].cpu_us_per_job + costs[drain].cpu_us_per_job
            whole.append(
                f"- {label}: {us:.1f} µs of Redis CPU per job, so one Redis core sustains "
                f"~{1e6 / us:,.0f} jobs/s end to end"
            )
    if whole:
        lines += ["", "A job is published once and drained once:", "", *whole]
    return [*lines, ""]


def render(bench: Bench) -> str:
    lines = [
        f"# Benchmark results ({datetime.now(UTC):%Y-%m-%d %H:%M UTC})",
        "",
        *machine(bench),
        "",
    ]
    if bench.rows:
        lines += [
            "| Figure | Service | Baseline (same run, same Redis) | Ratio service/baseline |",
            "|---|---|---|---|",
            *(f"| {r.figure} | {r.service} | {r.baseline} | {r.ratio} |" for r in bench.rows),
            "",
            "↑ higher is better, ↓ lower is better. How each figure is measured:",
            "- Drain: from the first job's `started_at` to the last job's `ended_at` (job "
            "hashes), so worker start-up is excluded; the service's pre-loaded queue is parked "
            "until every worker process is consuming. RQ drains fewer jobs (it is slower).",
            "- HTTP: one server process each (and two each, the connections shared out, a wrk "
            "per process), warmed up for 1 s; the service and the bare app alternate for 5 "
            "rounds and the median round is shown (the log has them all); jobs in Redis are "
            "checked against the 2xx count after each run (see the log for the check and CPU "
            "per job).",
            "- Latency: open loop, one job every 1/rate s by the clock, sent straight to Redis "
            "(service: its Store's PUBLISH script; RQ: `Queue.enqueue`); latency is the job's "
            "`started_at` minus its scheduled send time; the first second is a warm-up.",
            "",
        ]
    lines += bench.sections
    lines += redis_cost_section(bench.costs)
    lines += [f"- Warning: {note}" for note in bench.notes]
    return "\n".join(lines).rstrip() + "\n"
