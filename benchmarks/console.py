"""The console's cost on the publish path: `POST /jobs` on one API process with no console page
open, then with OPEN_PAGES console pages open (each polling the overview and the workers once a
second: twice the pages' real rate), alternating, ROUNDS times; the median ratio is printed. Also
the key check of the publish fast path, per request, against the one-key check it replaced.

    .venv/bin/python -m benchmarks.console [--duration 5] [--loadgen auto|wrk|python]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import timeit
import urllib.request
from pathlib import Path

from benchmarks.common import load_average, log
from benchmarks.harness import Bench
from benchmarks.loadgen import choose, run_load
from service.api.console_session import Keys
from service.config.settings import Secret
from service.net import apikeys

OPEN_PAGES = 5
ROUNDS = 3
CONNECTIONS = 64
BODY = b'{"type":"noop"}'


def poll_pages(base: str, stop: threading.Event, polls: list[int]) -> None:
    """One open console page: the overview and the workers, once a second each."""
    while not stop.wait(1.0):
        for path in ("/console/api/overview", "/console/api/workers"):
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                answer.read()
            polls.append(1)


def publish_rate(bench: Bench, base: str, pages: int) -> tuple[float, int]:
    """Accepted POST /jobs per second with `pages` console pages open, and their polls."""
    stop, polls = threading.Event(), list[int]()
    threads = [
        threading.Thread(target=poll_pages, args=(base, stop, polls), daemon=True)
        for _ in range(pages)
    ]
    for thread in threads:
        thread.start()
    try:
        load = run_load(
            bench.generator, f"{base}/jobs", BODY, CONNECTIONS, bench.args.duration, bench.work_dir
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return load.ok_per_second, len(polls)


def key_check_ns() -> tuple[float, float]:
    """ns per fast-path key check: the console's two-role check against the one-role one."""
    key = Secret("k" * 43)
    keys = Keys([key], [Secret("r" * 43)], None)
    header = b"Bearer " + b"k" * 43
    n = 200_000
    ours = timeit.timeit(lambda: keys.bearer(header) == "full", number=n) / n * 1e9
    before = timeit.timeit(lambda: apikeys.allows([b"k" * 43], header), number=n) / n * 1e9
    return ours, before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--loadgen", default="auto", choices=("auto", "wrk", "python"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as work_dir:
        bench = Bench(args, Path(work_dir))
        bench.generator, note = choose(args.loadgen)
        try:
            bench.server.start()
            _, base = bench.start_api()
            log(f"load generator: {note}; load average {load_average()}")
            run_load(bench.generator, f"{base}/jobs", BODY, CONNECTIONS, 1.0, bench.work_dir)
            ratios = []
            for number in range(ROUNDS):
                order = (0, OPEN_PAGES) if number % 2 == 0 else (OPEN_PAGES, 0)
                rates = {}
                for pages in order:
                    rates[pages], polls = publish_rate(bench, base, pages)
                    log(
                        f"  round {number + 1}: {pages} pages open ({polls} polls): "
                        f"{rates[pages]:,.0f} jobs/s"
                    )
                ratios.append(rates[OPEN_PAGES] / rates[0])
        finally:
            bench.close()
    ours, before = key_check_ns()
    log(
        f"publish rate with {OPEN_PAGES} console pages open / with none, by round: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f"; median {statistics.median(ratios):.3f}"
    )
    log(
        f"fast-path key check: {ours:.0f} ns (full and read-only roles) vs {before:.0f} ns "
        "(one role) per request"
    )


if __name__ == "__main__":
    main()
