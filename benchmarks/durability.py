"""Durability cost: the publish path against a Redis with AOF, `everysec` vs `always`.

Redis 7.0 has no WAITAOF, so the strict choice is `appendfsync always`: Redis fsyncs the AOF
before it answers (once per event-loop turn, so pipelined or batched writes share one fsync).
Each policy gets its own fresh redis-server; the service's API and worker run against it, with
`DURABILITY=strict` (the setting that requires `always`) on the strict one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import fmt_rate, log
from benchmarks.drain import drain_service
from benchmarks.harness import Bench, Row
from benchmarks.publish import BATCH_JOBS, service_batch_post, service_single_post
from service.dev.embedded_redis import EmbeddedRedis

POLICIES = ("everysec", "always")
# The service's DURABILITY setting for each: strict refuses any Redis but `always`.
SETTING = {"everysec": "relaxed", "always": "strict"}


def run(bench: Bench) -> None:
    n = bench.args.jobs
    log(
        f"\n== durability: AOF on (appendonly yes), appendfsync {' vs '.join(POLICIES)}; "
        f"POST /jobs, POST /jobs/batch x {BATCH_JOBS}, and a drain of {n:,} jobs "
        f"(temporary directory on {filesystem(Path(tempfile.gettempdir()))})"
    )
    figures: dict[str, tuple[float, float, float]] = {}
    for policy in POLICIES:
        server = EmbeddedRedis(appendonly=True, extra_args=("--appendfsync", policy))
        server.start()
        try:
            bench.service_env["DURABILITY"] = SETTING[policy]
            with bench.using_redis(server):
                log(
                    f"   -- appendfsync {policy}, DURABILITY={SETTING[policy]} "
                    f"(redis-server pid {server.pid})"
                )
                single, _ = service_single_post(bench)
                batch, _ = service_batch_post(bench)
                drained = drain_service(bench, n)
                log(drained.describe("drain, defaults"))
        finally:
            bench.service_env.pop("DURABILITY", None)
            server.stop()
        figures[policy] = (single.ok_per_second, batch.ok_per_second * BATCH_JOBS, drained.rate)
    lax, strict = figures["everysec"], figures["always"]
    for index, what, unit in (
        (0, "HTTP POST /jobs, 2xx/s ↑", "req/s"),
        (1, f"Batch publish (POST /jobs/batch x {BATCH_JOBS}), jobs/s ↑", "jobs/s"),
        (2, "Drain at defaults, jobs/s ↑", "jobs/s"),
    ):
        bench.rows.append(
            Row(
                f"Durability: {what}, appendfsync always + DURABILITY=strict (service) vs "
                "everysec, relaxed (baseline)",
                fmt_rate(strict[index], unit),
                f"appendfsync everysec, relaxed: {fmt_rate(lax[index], unit)}",
                f"{strict[index] / lax[index]:.3g}x" if lax[index] else "n/a",
            )
        )


def filesystem(path: Path) -> str:
    """The type and mount point of the filesystem holding `path` (fsync cost depends on it)."""
    best = ("?", "/")
    target = os.path.realpath(path)
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, kind, *_ = line.split()
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (kind, mount)
    return f"{best[0]} mounted at {best[1]}"
