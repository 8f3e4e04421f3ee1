"""CI's performance guard: the worker's drain against plain RQ's, measured in the same run.

    .venv/bin/python benchmarks/guard.py [--threshold 20]

Drains N no-op jobs with the service's worker at its defaults (a process per CPU, 5 jobs in
flight each, batch 50) and N/10 with RQ's `SimpleWorker`, on one private redis-server, and
exits 1 only if the ratio is below the threshold (20x; about 100x is usual here). A ratio,
not a time: a slow or busy machine slows both. A failing first measurement is taken again
once, and the better ratio counts, so one noisy moment on a shared machine does not fail CI.
Takes 20-60 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/guard.py` works as well as `python -m`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load_average, log
from benchmarks.drain import drain_rq, drain_service
from benchmarks.harness import Bench

THRESHOLD = 20.0  # fail below this many times plain RQ's drain rate
JOBS = 10000  # the service's drain; RQ drains a tenth (it is about 100x slower)
ATTEMPTS = 2


def measure(bench: Bench, jobs: int, rq_jobs: int) -> tuple[float, float]:
    """(service jobs/s, RQ jobs/s) on fresh databases of the same redis-server."""
    service = drain_service(bench, jobs)
    baseline = drain_rq(bench, rq_jobs)
    if service.failed or baseline.failed:
        raise RuntimeError(f"failed jobs: service {service.failed}, RQ {baseline.failed}")
    return service.rate, baseline.rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--jobs", type=int, default=JOBS)
    args = parser.parse_args(argv)
    rq_jobs = max(500, args.jobs // 10)
    started = time.monotonic()
    best = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as work_dir:
        bench = Bench(args, Path(work_dir))
        try:
            bench.server.start()
            for attempt in range(1, ATTEMPTS + 1):
                service, rq = measure(bench, args.jobs, rq_jobs)
                ratio = service / rq if rq > 0 else float("inf")
                best = max(best, ratio)
                log(
                    f"guard: attempt {attempt}: service drain {service:,.0f} jobs/s "
                    f"({args.jobs:,} jobs, defaults), RQ SimpleWorker {rq:,.0f} jobs/s "
                    f"({rq_jobs:,} jobs): {ratio:.1f}x (load average {load_average()})"
                )
                if best >= args.threshold:
                    break
        finally:
            bench.close()
    verdict = "OK" if best >= args.threshold else "FAIL"
    log(
        f"guard: {verdict}: drain ratio {best:.1f}x plain RQ, threshold {args.threshold:g}x "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
