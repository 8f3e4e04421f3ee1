"""Benchmarks of the job service, each figure beside a baseline measured in the same run.

    .venv/bin/python benchmarks/bench.py                 # every phase but the peers
    .venv/bin/python benchmarks/bench.py --peers         # and Celery, Dramatiq, arq, BullMQ
    .venv/bin/python benchmarks/bench.py --quick         # smoke run, about 2 minutes
    .venv/bin/python benchmarks/bench.py --only drain,latency --jobs 50000

Everything runs against a private redis-server (EmbeddedRedis) on a free port; the service,
the baselines and the peers run as real subprocesses. Every process started here is stopped at
the end, also on Ctrl-C or an error. See benchmarks/README.md for what each phase measures.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # `python benchmarks/bench.py` works as well as `python -m`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    concurrency,
    dependencies,
    drain,
    durability,
    latency,
    limits,
    loadgen,
    long_poll,
    memory,
    publish,
    report,
    schedules,
    sizing,
)
from benchmarks.common import RESULTS, load_average, log
from benchmarks.harness import Bench
from benchmarks.peers import phase as peers

# Phases in the order they run. "peers" runs only when asked for (--peers).
PHASES: dict[str, Callable[[Bench], None]] = {
    "drain": drain.run,
    "concurrency": concurrency.run,
    "http": publish.run_http,
    "batch": publish.run_batch,
    "enqueue": publish.run_enqueue,
    "latency": latency.run,
    "long_poll": long_poll.run,
    "memory": memory.run,
    "durability": durability.run,
    "schedules": schedules.run,
    "dependencies": dependencies.run,
    "sizing": sizing.run,
    "limits": limits.run,
    "peers": peers.run,
}
DEFAULT_PHASES = [name for name in PHASES if name != "peers"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, help="jobs in the drain (default 20000; quick 2000)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 10; quick 3)")
    parser.add_argument(
        "--only",
        help=f"comma-separated phases: {','.join(PHASES)} (default: all but peers)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also install (once, into benchmarks/.peers/) and measure the peer job queues",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs/s in the latency phases")
    parser.add_argument(
        "--memory-jobs",
        type=int,
        help="jobs in the memory curve (default 100000; quick 20000), sampled every tenth",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load generator (auto: wrk when on PATH)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of the concurrency phase, ours and peers alternating (default 3; quick 1)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (2000 if args.quick else 20000)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.memory_jobs = args.memory_jobs or (20000 if args.quick else 100000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.rq_jobs = max(500, args.jobs // 10)
    phases = [p.strip() for p in args.only.split(",")] if args.only else list(DEFAULT_PHASES)
    if args.peers and "peers" not in phases:
        phases.append("peers")
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {list(PHASES)}")
    args.phases = [name for name in PHASES if name in phases]
    if args.loadgen == "wrk" and shutil.which("wrk") is None:
        parser.error("--loadgen wrk: wrk is not on PATH (apt-get install -y wrk)")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` cleans up like Ctrl-C
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir:
        bench = Bench(args, Path(work_dir))
        bench.generator, bench.generator_note = loadgen.choose(args.loadgen)
        bench.load_at_start = load_average()
        try:
            bench.server.start()
            log(
                f"private redis-server on port {bench.server.port} (pid {bench.server.pid}); "
                f"phases: {', '.join(args.phases)}; load generator: {bench.generator}; "
                f"load average {bench.load_at_start}"
            )
            for name in args.phases:
                PHASES[name](bench)
            table = report.render(bench)
        except KeyboardInterrupt:
            log("\ninterrupted: stopping every process started by this run")
            return 130
        except Exception:
            for child in bench.procs.children:
                log(f"--- last output of {child.name} (pid {child.pid}):\n{child.tail()}")
            raise
        finally:
            bench.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    # Every run is also kept under its own name: latest.md is overwritten by the next one.
    kept = args.output.with_name(f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md")
    kept.write_text(table)
    log(
        f"\n{table}\n(total {time.monotonic() - started:.0f} s; written to {args.output} "
        f"and {kept.name})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
