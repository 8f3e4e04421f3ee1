"""Failover, measured: a primary, two replicas and three Sentinels (down-after 1 s); the API
and a worker found through Sentinel; HTTP publishes at a steady rate, each with its own
Idempotency-Key, retried with it until a 2xx; SIGKILL the primary.

For each DURABILITY (replicated, then relaxed, the default) it prints how long publishing
stopped (kill to the first acknowledgement on the new primary), when it was back at the full
rate, and how many acknowledged jobs the new primary does not have (lost with the old one),
with the window they were acknowledged in. Run: `.venv/bin/python benchmarks/failover.py
[--rate 150] [--rounds 3]`. Standalone: not a phase of bench.py.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import constants
from service.dev.embedded_redis import free_port

# The test suite's helpers (real redis-server and Sentinel processes, a steady HTTP client,
# the service as a process), imported by name: the tests are not type-checked.
ha: Any = importlib.import_module("tests.redis_ha")
ServiceProcess: Any = importlib.import_module("tests.conftest").ServiceProcess


def poll(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def one_round(durability: str, rate: float, folder: Path) -> dict[str, float]:
    group = ha.Group().start()
    api = worker = None
    try:
        poll(lambda: ha.watched(group), 30, "Sentinels watching")
        env = ha.sentinel_env(group, DURABILITY=durability, REDIS_REPLICA_TIMEOUT="500")
        api = ServiceProcess({**env, "PORT": str(free_port())}, log=folder / "api.log")
        worker = ServiceProcess(
            {**env, "PORT": str(free_port()), "WORKER_MODE": "true"}, log=folder / "worker.log"
        )
        api.wait_healthy()
        worker.wait_healthy()
        body = {"type": "noop"}
        publisher = ha.SteadyPublisher(api.url, rate, lambda n: body).start()
        time.sleep(3)  # steady state before the kill
        old = group.primary_port()
        group.node(old or 0).kill()
        killed = time.monotonic()
        poll(lambda: group.primary_port() not in (None, old), 30, "a new primary")
        time.sleep(8)  # long enough to see the full rate again
        publisher.stop()
        new = redis.Redis(port=group.primary_port() or 0, db=1)
        lost = [a for a in publisher.acks if not new.exists(constants.job_key(a.id))]
        new.close()
        first = min((a.at for a in publisher.acks if a.at > killed + 0.001), default=float("nan"))
        back = publisher.recovered_at(killed)
        window = (max(killed - a.at for a in lost) * 1000) if lost else 0.0
        return {
            "stopped_s": first - killed,
            "full_rate_s": (back - killed) if back is not None else float("nan"),
            "acked": len(publisher.acks),
            "lost": len(lost),
            "loss_window_ms": window,
        }
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop()
        group.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150, help="publishes per second")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"failover: rate {args.rate:g}/s, {args.rounds} rounds, load {os.getloadavg()}")
    print(
        "| DURABILITY | publishing stopped (s) | full rate again (s) | acked | lost | window (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for durability in ("replicated", "relaxed"):
        rounds = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="failover-") as folder:
                rounds.append(one_round(durability, args.rate, Path(folder)))
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"| {durability} | {median['stopped_s']:.1f} | {median['full_rate_s']:.1f} | "
            f"{sum(r['acked'] for r in rounds):.0f} | {sum(r['lost'] for r in rounds):.0f} | "
            f"{max(r['loss_window_ms'] for r in rounds):.1f} |"
        )
    print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
