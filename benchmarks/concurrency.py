"""Concurrency: jobs that wait on I/O, or keep a core busy, drained by one worker container.

Every job is queued before the worker starts (parked until every process consumes) and the
drain is timed from the first job's start to the last one's end, as in drain.py. The jobs
(benchmarks/demo_handlers.py): `bench.async_sleep` awaits a 100 ms timer, `bench.sync_sleep`
blocks its thread in `time.sleep(0.1)`, `bench.cpu` spends 20 ms of CPU in a Python loop.
"Of ideal" is the rate over what the slots allow if never idle: slots / 0.1 s for I/O jobs.

With --peers, BullMQ (await a 100 ms timer), arq (`max_jobs`, `asyncio.sleep`) and Dramatiq
(threads, `time.sleep`) drain the same I/O jobs on the same Redis. The machine is shared and
noisy, so every setup runs in each of --rounds rounds, ours and a peer alternating (every
other round in reverse order), and the median is reported beside each round's figure.
Memory is the worker container's VmRSS at the end of its drain: the supervisor and every
worker process summed (the peers: their worker processes; BullMQ's one Node process).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.common import DB_SERVICE, cpu_seconds, load_average, log, vm_kib
from benchmarks.drain import preload_parked, release, start_and_release
from benchmarks.harness import HANDLERS, Bench, Row
from benchmarks.peers import install
from benchmarks.peers import phase as peers
from benchmarks.peers.phase import PeerConfig
from service.config import constants

IO_SECONDS = 0.1  # what an I/O job waits (benchmarks/demo_handlers.py, peers/driver.py)
CPU_SECONDS = 0.02  # CPU time of a CPU-bound job
IO_JOBS, IO_JOBS_QUICK = 5000, 1000  # at 50 in flight: 10 s (quick: 2 s) if never idle
WIDE_JOBS, WIDE_JOBS_QUICK = 20000, 2500  # at 500 in flight: 4 s (0.5 s)
CPU_JOBS, CPU_JOBS_QUICK = 500, 100  # on one core: 10 s (2 s)


@dataclass(frozen=True)
class Ours:
    """One setup of the service's worker container."""

    label: str
    job_type: str
    processes: int
    concurrency: int
    jobs: int
    ideal: float  # jobs/s with every slot always busy


@dataclass
class Measured:
    label: str
    ideal: float
    rates: list[float] = field(default_factory=list)  # jobs/s, one per round
    rss_mib: list[float] = field(default_factory=list)  # the container's, one per round
    note: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def rss(self) -> float:
        return statistics.median(self.rss_mib) if self.rss_mib else 0.0

    @property
    def of_ideal(self) -> float:
        return self.rate / self.ideal if self.ideal else 0.0


Entry = tuple[str, float, Callable[[], tuple[float, float]]]  # label, ideal, run one round


def run(bench: Bench) -> None:
    args = bench.args
    quick = args.quick
    io_jobs = IO_JOBS_QUICK if quick else IO_JOBS
    wide_jobs = WIDE_JOBS_QUICK if quick else WIDE_JOBS
    cpu_jobs = CPU_JOBS_QUICK if quick else CPU_JOBS
    io = 1 / IO_SECONDS  # jobs/s one slot runs
    log(
        f"\n== concurrency: {io_jobs:,} jobs of a 100 ms wait (and {wide_jobs:,} at 500 in "
        f"flight, {cpu_jobs:,} of 20 ms CPU) pre-loaded, then one worker container; "
        f"{args.rounds} round(s)" + (", peers alternating" if args.peers else "")
    )
    ours = [
        Ours("service, 1 process x 50, async", "bench.async_sleep", 1, 50, io_jobs, 50 * io),
        Ours("service, 1 process x 50, sync", "bench.sync_sleep", 1, 50, io_jobs, 50 * io),
        Ours("service, 2 processes x 50, async", "bench.async_sleep", 2, 50, io_jobs, 100 * io),
        Ours("service, 1 process x 500, async", "bench.async_sleep", 1, 500, wide_jobs, 500 * io),
        Ours("service, CPU, 1 process x 5", "bench.cpu", 1, 5, cpu_jobs, 1 / CPU_SECONDS),
        Ours("service, CPU, 2 processes x 5", "bench.cpu", 2, 5, cpu_jobs, 2 / CPU_SECONDS),
    ]
    theirs: list[tuple[PeerConfig, float]] = []
    if args.peers:
        theirs = [
            (PeerConfig("BullMQ, concurrency 50", "bullmq", 1, 50, "drain", "sleep", io_jobs), 50),
            (
                PeerConfig(
                    "Dramatiq, 1 process x 50 threads", "dramatiq", 1, 50, "drain", "sleep", io_jobs
                ),
                50,
            ),
            (PeerConfig("arq, max_jobs 50", "arq", 1, 50, "drain", "sleep", io_jobs), 50),
            (
                PeerConfig(
                    "BullMQ, concurrency 500", "bullmq", 1, 500, "drain", "sleep", wide_jobs
                ),
                500,
            ),
        ]
    entries: list[Entry] = []
    for index, setup in enumerate(ours):  # ours and a peer alternate while there are peers
        entries.append((setup.label, setup.ideal, _bind_ours(bench, setup)))
        if index < len(theirs):
            config, slots = theirs[index]
            entries.append((config.label, slots * io, _bind_peer(bench, config)))
    results = {label: Measured(label, ideal) for label, ideal, _ in entries}
    for number in range(args.rounds):
        order = entries if number % 2 == 0 else entries[::-1]
        log(f"   -- round {number + 1} of {args.rounds} (load average {load_average()})")
        for label, _, measure in order:
            result = results[label]
            if result.note:  # failed before: not again
                continue
            try:
                rate, rss = measure()
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
                result.note = f"failed: {exc}"
                log(f"   {label}: {result.note}")
                continue
            result.rates.append(rate)
            result.rss_mib.append(rss)
            log(
                f"   {label:<36} {rate:>8,.0f} jobs/s ({rate / result.ideal:.2f} of ideal), "
                f"container RSS {rss:,.1f} MiB"
            )
    _report(bench, results)


def _bind_ours(bench: Bench, setup: Ours) -> Callable[[], tuple[float, float]]:
    return lambda: _drain_ours(bench, setup)


def _bind_peer(bench: Bench, config: PeerConfig) -> Callable[[], tuple[float, float]]:
    return lambda: _drain_peer(bench, config)


def _drain_ours(bench: Bench, setup: Ours) -> tuple[float, float]:
    """One drain; returns jobs/s and the container's RSS in MiB at its end."""
    client = bench.db(DB_SERVICE)
    ids = preload_parked(bench, setup.jobs, setup.job_type)
    worker, workers = start_and_release(
        bench, setup.processes, setup.concurrency, HANDLER_MODULES=HANDLERS
    )
    pids = [worker.pid, *workers]
    cpu_before = sum(map(cpu_seconds, pids))
    released = time.perf_counter()
    release(bench, len(workers))
    timeout = max(60.0, 5 * setup.jobs / setup.ideal)
    finished, failed = bench.wait_finished(client, setup.jobs, timeout=timeout, poll=0.02)
    elapsed = time.perf_counter() - released
    cpu = sum(map(cpu_seconds, pids)) - cpu_before
    rss = sum(vm_kib(pid) for pid in pids) / 1024
    peak = sum(vm_kib(pid, "VmHWM") for pid in pids) / 1024
    bench.procs.stop(worker)
    if failed:
        raise RuntimeError(f"{failed} of {setup.jobs} jobs failed")
    times = bench.job_times(client, ids, ("started_at", "ended_at"))
    starts = [t[0] or 0.0 for t in times]
    ends = [t[1] or 0.0 for t in times]
    span = max(ends) - min(starts)
    log(
        f"   {setup.label}: {finished:,} finished in {span:.2f} s (release to all finished "
        f"{elapsed:.2f} s); {_where_time_went(bench, setup, ids, starts, ends, span)}; "
        f"container CPU {cpu / setup.jobs * 1e6:,.0f} µs per job ({cpu / elapsed:.0%} of a "
        f"core); RSS {rss:.1f} MiB (peaks summed {peak:.1f})"
    )
    return setup.jobs / span, rss


def _where_time_went(
    bench: Bench, setup: Ours, ids: list[str], starts: list[float], ends: list[float], span: float
) -> str:
    """Per job, means: the handler's own run (the results stream's execution_started_at and
    _ended_at), claim (started_at) to handler start, handler end to recorded (ended_at), and
    the time a slot spends outside handlers (span x slots / jobs minus the handler's run)."""
    client = bench.db(DB_SERVICE)
    runs: list[tuple[float, float]] = []
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 5000]:
                pipe.xrange(constants.result_key(job_id), count=1)
            for entries in pipe.execute():
                fields = entries[0][1]
                runs.append(
                    (float(fields[b"execution_started_at"]), float(fields[b"execution_ended_at"]))
                )
    n = len(ids)
    handler = sum(t1 - t0 for t0, t1 in runs) / n
    to_start = sum(t0 - s for (t0, _), s in zip(runs, starts, strict=True)) / n
    to_record = sum(e - t1 for (_, t1), e in zip(runs, ends, strict=True)) / n
    slots = setup.processes * setup.concurrency
    outside = span * slots / n - handler
    return (
        f"per job: handler {handler * 1e3:.2f} ms, claimed → handler start "
        f"{to_start * 1e3:.2f} ms, handler end → recorded {to_record * 1e3:.2f} ms, a slot "
        f"outside handlers {outside * 1e3:.2f} ms"
    )


def _drain_peer(bench: Bench, config: PeerConfig) -> tuple[float, float]:
    peer = install.ensure(config.peer)
    if not peer.ok:
        raise RuntimeError(peer.message)
    result = peers.measure(bench, peer, config)
    drain = result["drain"]
    return float(drain["rate"]), sum(drain["rss_kib"]) / 1024


# --- the report -----------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _report(bench: Bench, results: dict[str, Measured]) -> None:
    get = results.get
    async50, sync50 = get("service, 1 process x 50, async"), get("service, 1 process x 50, sync")
    async2, async500 = (
        get("service, 2 processes x 50, async"),
        get("service, 1 process x 500, async"),
    )
    cpu1, cpu2 = get("service, CPU, 1 process x 5"), get("service, CPU, 2 processes x 5")
    bull50, bull500 = get("BullMQ, concurrency 50"), get("BullMQ, concurrency 500")
    targets: dict[str, str] = {}
    if async50 and async50.rates:
        target = f"≥ 0.95 of ideal: {_verdict(async50.of_ideal >= 0.95)}"
        if bull50 and bull50.rates:
            target += f"; ≥ BullMQ c50: {_verdict(async50.rate >= bull50.rate)}"
            target += f"; RSS ≤ 1.5x BullMQ's: {_verdict(async50.rss <= 1.5 * bull50.rss)}"
        targets[async50.label] = target
    if sync50 and sync50.rates:
        targets[sync50.label] = f"≥ 0.9 of ideal: {_verdict(sync50.of_ideal >= 0.9)}"
    if async2 and async2.rates:
        targets[async2.label] = f"≥ 0.9 of ideal: {_verdict(async2.of_ideal >= 0.9)}"
    if async500 and async500.rates:
        targets[async500.label] = "informative"
    if cpu1 and cpu2 and cpu1.rates and cpu2.rates:
        scale = cpu2.rate / cpu1.rate
        targets[cpu2.label] = f"≥ 1.7x 1 process: {_verdict(scale >= 1.7)}"
    reference = {
        "service, 1 process x 500, async": bull500,
        "BullMQ, concurrency 500": bull500,
    }
    lines = [
        "## Concurrency: jobs that wait 100 ms, and CPU-bound jobs (one worker container)",
        "",
        f"Median of {bench.args.rounds} alternating round(s); every round's figure in the last "
        "column. The ratios are to BullMQ at the same number of jobs in flight, same run.",
        "",
        "| setup | jobs/s | of ideal | container RSS, MiB | x BullMQ (jobs/s) | x BullMQ (RSS) "
        "| rounds, jobs/s | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, m in results.items():
        if not m.rates:
            lines.append(f"| {label} | — | | | | | | {m.note} |")
            continue
        peer = reference.get(label, bull50)
        if label.startswith("service, CPU") or peer is None or peer is m or not peer.rates:
            versus_rate = versus_rss = ""
        else:
            versus_rate = f"{m.rate / peer.rate:.2f}x"
            versus_rss = f"{m.rss / peer.rss:.2f}x"
        rounds = ", ".join(f"{r:,.0f}" for r in m.rates)
        target = targets.get(label, m.note)
        lines.append(
            f"| {label} | {m.rate:,.0f} | {m.of_ideal:.2f} | {m.rss:,.1f} | {versus_rate} | "
            f"{versus_rss} | {rounds} | {target} |"
        )
    lines += [
        "",
        "Ideal: every slot always busy (1 process x 50 slots of 100 ms jobs: 500 jobs/s; CPU: "
        "one job per 20 ms per process). Container RSS: VmRSS at the end of the drain, the "
        "supervisor and its worker processes summed; a peer's worker processes (BullMQ: its "
        "one Node process, the enqueuing thread included).",
        "",
    ]
    bench.sections += lines
    log("\n".join("   " + line for line in lines))
    for label, m in results.items():
        if m.rates and label in targets:
            baseline, ratio = _baseline(label, m, results)
            bench.rows.append(
                Row(
                    f"Concurrency: {label}, jobs/s ↑ (of ideal; container RSS, MiB)",
                    f"{m.rate:,.0f} ({m.of_ideal:.2f}; {m.rss:,.1f})",
                    baseline,
                    f"{ratio}; {targets[label]}" if ratio else targets[label],
                )
            )


def _baseline(label: str, m: Measured, results: dict[str, Measured]) -> tuple[str, str]:
    """What a row of ours is compared with in the main table, and the ratio of jobs/s."""
    if label.startswith("service, CPU"):
        other = results.get("service, CPU, 1 process x 5")
    else:
        other = results.get(
            "BullMQ, concurrency 500" if "x 500" in label else "BullMQ, concurrency 50"
        )
    if other is None or not other.rates or other is m:
        return "", ""
    return (
        f"{other.label}: {other.rate:,.0f} ({other.of_ideal:.2f}; {other.rss:,.1f})",
        f"{m.rate / other.rate:.2f}x",
    )
