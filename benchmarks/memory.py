"""Memory over a long drain: VmRSS of every worker process at each tenth of M jobs (100,000).

Two curves: the built-in `noop` (a plain handler) at the defaults, and `bench.async_noop` (an
`async def`, run as a task) with 50 jobs in flight per process. Each shows whether a worker
grows with the jobs it has run ("flat": within FLAT of its size after the first tenth); it is
printed, added to the report, and saved as CSV (benchmarks/results/memory.csv and
memory-async.csv by default, beside --output). The whole container (supervisor and worker
processes) at the end is set against the compose file's memory limit for a worker replica.
"""

from __future__ import annotations

import csv
import importlib.util
import time
from pathlib import Path

from benchmarks.common import DB_SERVICE, fmt_rate, log, smaps_kib, vm_kib
from benchmarks.drain import preload_parked, release, start_and_release
from benchmarks.harness import FAILED_KEY, FINISHED_KEY, HANDLERS, Bench, Row

SAMPLES = 10  # one sample at each tenth of the run
SAMPLE_POLL = 0.01  # seconds between progress polls: ~100 jobs late at 10,000 jobs/s
FLAT = 0.05  # a worker is flat when it stays within 5 % of its size after the first tenth
ASYNC_CONCURRENCY = 50  # jobs in flight per process in the async curve
WORKER_LIMIT_MIB = 768  # docker-compose.yml: deploy.resources.limits.memory of `worker`


def run(bench: Bench) -> None:
    _curve(bench, "noop", 5, "memory.csv", "defaults: plain `noop`")
    _curve(
        bench,
        "bench.async_noop",
        ASYNC_CONCURRENCY,
        "memory-async.csv",
        f"`async def` no-op, WORKER_CONCURRENCY={ASYNC_CONCURRENCY}",
    )


def _curve(bench: Bench, job_type: str, concurrency: int, csv_name: str, title: str) -> None:
    n = bench.args.memory_jobs
    step = max(1, n // SAMPLES)
    log(f"\n== memory: VmRSS of each worker process every {step:,} jobs of {n:,} ({title})")
    client = bench.db(DB_SERVICE)
    preload_parked(bench, n, job_type)
    worker, workers = start_and_release(bench, None, concurrency, HANDLER_MODULES=HANDLERS)
    pids = [worker.pid, *workers]
    rows = [_sample(0, 0, pids)]  # before the first job
    released = time.perf_counter()
    release(bench, len(workers))
    deadline = released + max(120.0, n / 200)
    target = step
    while target <= n:
        with client.pipeline(transaction=False) as pipe:
            pipe.zcard(FINISHED_KEY)
            pipe.zcard(FAILED_KEY)
            done = sum(pipe.execute())
        if done >= target:
            rows.append(_sample(target, done, pids))
            target += step
            continue
        if time.perf_counter() > deadline:
            raise TimeoutError(f"memory run: {done:,} of {n:,} jobs done in time")
        time.sleep(SAMPLE_POLL)
    elapsed = time.perf_counter() - released
    shares = [smaps_kib(pid) for pid in workers]
    bench.procs.stop(worker)
    path = bench.args.output.parent / csv_name
    _write_csv(path, rows, len(workers))
    _report(bench, rows, n, elapsed, path, title)
    pss = max(k["Pss"] for k in shares) / 1024
    private = max(k["Private"] for k in shares) / 1024
    note = (
        f"At the end, per worker process: PSS at most {pss:.1f} MiB, private memory at most "
        f"{private:.1f} MiB (RSS counts the interpreter's and shared libraries' pages in full in "
        "every process; PSS splits them between the processes that share them)."
    )
    if _otel_sdk_installed():
        note += (
            " OpenTelemetry's SDK is installed here (the `otel` extra, not in the image): "
            "redis-py imports its metrics part in every process, about 2.5 MiB of RSS."
        )
    log(f"   {note}")
    bench.sections.insert(len(bench.sections) - 1, note)
    bench.sections.insert(len(bench.sections) - 1, "")


def _otel_sdk_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # not even the `opentelemetry` namespace
        return False


def _sample(target: int, done: int, pids: list[int]) -> list[int]:
    """[target, jobs done, supervisor KiB, worker KiB...]"""
    return [target, done, *(vm_kib(pid) for pid in pids)]


def _write_csv(path: Path, rows: list[list[int]], workers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["jobs_target", "jobs_done", "supervisor_rss_kib"]
    header += [f"worker_{i}_rss_kib" for i in range(1, workers + 1)]
    with path.open("w", newline="") as output:
        writer = csv.writer(output)
        writer.writerow(header)
        writer.writerows(rows)


def _report(
    bench: Bench, rows: list[list[int]], n: int, elapsed: float, path: Path, title: str
) -> None:
    workers = len(rows[0]) - 3
    head = "| jobs done | supervisor | " + " | ".join(f"worker {i}" for i in range(1, workers + 1))
    table = [head + " |", "|---" * (workers + 2) + "|"]
    for target, done, supervisor, *rss in rows:
        cells = [f"{done:,}" if target else "0 (before)", f"{supervisor / 1024:.1f}"]
        table.append("| " + " | ".join(cells + [f"{k / 1024:.1f}" for k in rss]) + " |")
    log("\n".join("   " + line for line in table))
    first, last = rows[1][3:], rows[-1][3:]
    growth = max(b - a for a, b in zip(first, last, strict=True)) / 1024
    # The largest change of any process over the run after the first tenth, as a share.
    drift = max(abs(b - a) / a for a, b in zip(first, last, strict=True))
    peak = max(last) / 1024
    container = (rows[-1][2] + sum(last)) / 1024
    log(
        f"   {n:,} jobs in {elapsed:.1f} s ({fmt_rate(n / elapsed, 'jobs/s')} by the wall clock); "
        f"largest worker {peak:.1f} MiB at the end; largest growth after the first "
        f"{rows[1][1]:,} jobs: {growth:+.1f} MiB ({drift:.1%}); container {container:.1f} MiB; "
        f"CSV: {path}"
    )
    verdict = "met" if drift <= FLAT else "**missed**"
    bench.rows.append(
        Row(
            f"Memory: worker RSS per process after {n:,} jobs ({title}), MiB ↓ (growth since "
            f"the first tenth)",
            f"max {peak:.1f} ({growth:+.1f}, {drift:.1%})",
            f"target: flat, within {FLAT:.0%}",
            verdict,
        )
    )
    bench.rows.append(
        Row(
            f"Memory: whole worker container after {n:,} jobs ({title}), MiB ↓",
            f"{container:.1f} ({workers} processes and the supervisor)",
            f"the compose limit for a worker replica: {WORKER_LIMIT_MIB} MiB",
            f"{container / WORKER_LIMIT_MIB:.0%} of it",
        )
    )
    bench.sections += [
        f"## Worker memory over {n:,} jobs (VmRSS, MiB; {title}, {workers} processes)",
        "",
        *table,
        "",
        f"Saved as `{path.name}` beside this report.",
        "",
    ]
