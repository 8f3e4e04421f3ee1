"""HTTP load generators: wrk when it is on PATH, else a small asyncio client (exact counts)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import percentile


def choose(requested: str) -> tuple[str, str]:
    """(generator, a note for the report) for --loadgen auto|wrk|python."""
    if requested == "python":
        return "python", "python (asyncio fallback, chosen with --loadgen python)"
    found = shutil.which("wrk")
    if found:
        return "wrk", f"wrk ({found})"
    return "python", "python (asyncio fallback: wrk is not on PATH)"


@dataclass
class Load:
    """The outcome of one closed-loop HTTP load run."""

    generator: str
    seconds: float
    responses: int  # complete responses
    non_2xx: int
    socket_errors: str
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)  # python generator only

    @property
    def ok(self) -> int:
        return self.responses - self.non_2xx

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds

    @property
    def exact(self) -> bool:
        """True when the generator waits for every request it sent (no cut-off in flight)."""
        return self.generator == "python"


def combined(loads: list[Load]) -> Load:
    """Runs made at once against processes of one server, as one: responses added, over the
    longest run's time; latency percentiles the worst of the runs' (wrk gives no samples)."""
    if len(loads) == 1:
        return loads[0]
    statuses: Counter[int] = Counter()
    for load in loads:
        statuses.update(load.statuses)
    errors = [load.socket_errors for load in loads if load.socket_errors != "none"]
    return Load(
        generator=loads[0].generator,
        seconds=max(load.seconds for load in loads),
        responses=sum(load.responses for load in loads),
        non_2xx=sum(load.non_2xx for load in loads),
        socket_errors="; ".join(errors) or "none",
        p50_ms=max(load.p50_ms for load in loads),
        p99_ms=max(load.p99_ms for load in loads),
        statuses=dict(statuses),
    )


def run_load(
    generator: str, url: str, body: bytes, connections: int, seconds: float, work_dir: Path
) -> Load:
    if generator == "wrk":
        return _run_wrk(url, body, connections, seconds, work_dir)
    return _run_python_load(url, body, connections, seconds)


def _run_wrk(url: str, body: bytes, connections: int, seconds: float, work_dir: Path) -> Load:
    script = work_dir / f"post-{len(body)}.lua"
    lua_body = body.decode()
    assert "]]" not in lua_body
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{lua_body}]]\n"
    )
    threads = max(1, min(2, connections))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, start_new_session=True
    )
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or out}")
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return Load(
        generator="wrk",
        seconds=float(total.group(2)) * scale,
        responses=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "none",
        p50_ms=_wrk_latency(out, "50%"),
        p99_ms=_wrk_latency(out, "99%"),
    )


def _wrk_latency(out: str, label: str) -> float:
    found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if found is None:
        return float("nan")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


def _run_python_load(url: str, body: bytes, connections: int, seconds: float) -> Load:
    """A small asyncio HTTP/1.1 keep-alive client: `connections` loops, each one request at a
    time. It stops sending at the deadline but waits for the answers in flight, so its counts
    are exact. One Python process: it saturates well below wrk."""
    runner_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        runner_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        return runner.run(_python_load(url, body, connections, seconds))


async def _python_load(url: str, body: bytes, connections: int, seconds: float) -> Load:
    match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match is not None
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors["connect"] += 1
            return
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - sent)
                statuses[int(head[9:12])] += 1
        except (OSError, asyncio.IncompleteReadError):
            errors["read"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    ms = [x * 1e3 for x in latencies] or [float("nan")]
    return Load(
        generator="python",
        seconds=elapsed,
        responses=sum(statuses.values()),
        non_2xx=sum(n for status, n in statuses.items() if not 200 <= status < 400),
        socket_errors=", ".join(f"{k} {v}" for k, v in errors.items()) or "none",
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        statuses=dict(statuses),
    )
