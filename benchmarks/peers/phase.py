"""The peers phase: Celery, arq, Dramatiq and BullMQ on the same private redis-server, then the
side-by-side table with the service and RQ figures of the same run.

Each peer runs as a child process in its own environment (see install.py): the Python peers
through driver.py, BullMQ through bullmq_peer.cjs. Both print `RESULT {json}`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from benchmarks.common import DB_PEERS, ROOT, fmt_ratio, log
from benchmarks.harness import Bench, SystemFigures
from benchmarks.peers import install
from benchmarks.peers.driver import RESULT_MARK

RUN_TIMEOUT = 1800  # seconds for one peer configuration, all its measurements


@dataclass(frozen=True)
class PeerConfig:
    label: str
    peer: str
    processes: int = 1
    threads: int = 1  # Dramatiq threads per process; BullMQ concurrency; arq max_jobs
    measure: str = "drain,latency"
    task: str = "noop"  # what the drain's jobs do: "noop", or "sleep" (a 100 ms wait)
    jobs: int = 0  # jobs in the drain; 0: --jobs


CONFIGS = (
    PeerConfig("Celery, solo pool", "celery"),
    PeerConfig("arq, poll 10 ms", "arq", 1, 10),
    PeerConfig("Dramatiq, 1 process x 8 threads", "dramatiq", 1, 8),
    PeerConfig("Dramatiq, 2 processes x 8 threads", "dramatiq", 2, 8),
    PeerConfig("BullMQ (Node), concurrency 1", "bullmq", 1, 1, "drain,bulk,latency"),
    PeerConfig("BullMQ (Node), concurrency 50", "bullmq", 1, 50, "drain,latency"),
)


def run(bench: Bench) -> None:
    args = bench.args
    log(
        f"\n== peers: drain {args.jobs:,} queued no-op jobs, enqueue one by one, bulk where "
        f"there is one, latency at {args.rate:g} jobs/s for {args.duration:g} s"
    )
    ready: dict[str, install.Installed] = {}
    for config in CONFIGS:
        if config.peer not in ready:
            ready[config.peer] = install.ensure(config.peer)
        peer = ready[config.peer]
        figures = bench.system(config.label)
        if not peer.ok:
            figures.note = peer.message
            log(f"   {config.label}: {peer.message}")
            continue
        try:
            result = measure(bench, peer, config)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            figures.note = f"failed: {exc}"
            log(f"   {config.label}: {figures.note}")
            continue
        _fill(figures, result)
        log(f"   {config.label}: {_summary(figures)}")
    bench.sections += side_by_side(bench)


def measure(bench: Bench, peer: install.Installed, config: PeerConfig) -> dict[str, Any]:
    """Run one peer configuration in its own environment; its `RESULT` as a dict."""
    args = bench.args
    jobs = str(config.jobs or args.jobs)
    common = ["--redis", bench.url(DB_PEERS), "--jobs", jobs, "--rate", str(args.rate)]
    common += ["--duration", str(args.duration), "--measure", config.measure]
    common += ["--task", config.task]
    if config.peer == "bullmq":
        script = ROOT / "benchmarks" / "peers" / "bullmq_peer.cjs"
        argv = [*peer.command, str(script), *common, "--concurrency", str(config.threads)]
    else:
        argv = [*peer.command, "-m", "benchmarks.peers.driver", config.peer, *common]
        argv += ["--processes", str(config.processes), "--threads", str(config.threads)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **peer.env}
    bench.db(DB_PEERS).flushdb()
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        start_new_session=True,
        check=False,
    )
    bench.db(DB_PEERS).flushdb()
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            return result
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    raise RuntimeError(f"exit code {done.returncode}, no result: {tail}")


def _fill(figures: SystemFigures, result: dict[str, Any]) -> None:
    if drain := result.get("drain"):
        figures.drain, figures.drain_jobs = drain["rate"], drain["jobs"]
        figures.enqueue = drain["enqueue_rate"]
        figures.redis_us, figures.redis_commands = drain["redis_us"], drain["redis_commands"]
        figures.rss_mib = sum(drain["rss_kib"]) / len(drain["rss_kib"]) / 1024
    if bulk := result.get("bulk"):
        figures.bulk, figures.bulk_how = bulk["rate"], f"addBulk x {bulk['per_call']}"
    if latency := result.get("latency"):
        figures.p50_ms, figures.p99_ms = latency["p50"], latency["p99"]
        if latency["lag_ms"] > 100:
            figures.note = f"the client fell {latency['lag_ms']:.0f} ms behind its schedule"


def _summary(f: SystemFigures) -> str:
    return (
        f"drain {_num(f.drain)} jobs/s, enqueue {_num(f.enqueue)} jobs/s, bulk {_num(f.bulk)}, "
        f"p50/p99 {_ms(f.p50_ms)}/{_ms(f.p99_ms)} ms, Redis {_num(f.redis_us, 1)} µs and "
        f"{_num(f.redis_commands, 1)} commands per job, RSS {_num(f.rss_mib, 1)} MiB"
    )


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def side_by_side(bench: Bench) -> list[str]:
    """The issue's table: every system measured in this run, on the same Redis."""
    rq = bench.systems.get("RQ SimpleWorker")
    rq_drain = rq.drain if rq and rq.drain else None
    lines = [
        f"## Side by side (one run, same private Redis, {bench.args.rate:g} jobs/s for latency)",
        "",
        "| system | drain jobs/s (jobs queued) | x RQ | enqueue one by one, jobs/s | "
        "bulk enqueue, jobs/s | enqueue → start p50 / p99, ms | Redis CPU µs / commands per "
        "job (drain) | worker RSS, MiB/process | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in bench.systems.items():
        drain = f"{_num(f.drain)} ({f.drain_jobs:,})" if f.drain else "—"
        ratio = fmt_ratio(f.drain, rq_drain) if f.drain and rq_drain else "—"
        bulk = f"{_num(f.bulk)} ({f.bulk_how})" if f.bulk else "—"
        latency = f"{_ms(f.p50_ms)} / {_ms(f.p99_ms)}" if f.p50_ms is not None else "—"
        redis = f"{_num(f.redis_us, 1)} / {_num(f.redis_commands, 1)}" if f.redis_us else "—"
        cells = [name, drain, ratio, _num(f.enqueue), bulk, latency, redis, _num(f.rss_mib, 1)]
        lines.append("| " + " | ".join([*cells, f.note]) + " |")
    lines += [
        "",
        "Drain: first job start to last job end (service and RQ: `started_at`/`ended_at` in the "
        "job hashes; peers: recorded in shared memory by the no-op task itself, no Redis call "
        "added), the queue parked until every worker process consumes. Enqueue one by one: "
        "one client, one call at a time (service: `Store.publish`, RQ: `Queue.enqueue`, "
        "peers: while pre-loading the drain). Latency: open loop from the scheduled send time. "
        "Each system at its defaults except where the name says otherwise.",
        "",
    ]
    return lines
