"""Benchmarks of the job service, each figure beside a baseline measured in the same run.

    .venv/bin/python benchmarks/bench.py                 # full run, about 3 minutes
    .venv/bin/python benchmarks/bench.py --quick         # smoke run, about 1 minute
    .venv/bin/python benchmarks/bench.py --only drain,latency --jobs 50000

Everything runs against a private redis-server (EmbeddedRedis) on a free port; the service
and the baselines run as real subprocesses on free ports. Every process started here is
stopped at the end, also on Ctrl-C or an error. See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/bench.py` works as well as `python -m`
    sys.path.insert(0, str(ROOT))

from service import constants, jobs  # noqa: E402
from service import registry as service_registry  # noqa: E402
from service.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from service.store import Store  # noqa: E402

QUEUE = "app-queue"  # the service's default QUEUE_NAME; the RQ baselines use it too (own db)
QUEUE_KEY = constants.queue_key(QUEUE)
FINISHED_KEY = constants.registry_key("finished", QUEUE)
FAILED_KEY = constants.registry_key("failed", QUEUE)
PARKED_KEY = "bench:parked"  # the pre-loaded queue waits here until every worker is ready
LPUSH_KEY = "bench:lpush"
RQ_NOOP = "benchmarks.bench.rq_noop"  # what the RQ baselines enqueue
RQ_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"

# Redis databases: the service's queue (QUEUE_REDIS_URL) and application data (REDIS_URL),
# plain RQ's baselines, and the bare LPUSH baseline. One redis-server for all of them.
DB_APP, DB_SERVICE, DB_RQ, DB_LPUSH = 0, 1, 2, 3
PHASES = ("drain", "http", "batch", "latency", "memory")
HTTP_CONNECTIONS = 64
BATCH_CONNECTIONS = 4
BATCH_JOBS = 1000  # jobs per POST /jobs/batch (the service's maximum) and per enqueue_many
PUBLISH_CHUNK = 1000  # jobs per PUBLISH script call when pre-loading
POLL = 0.05  # seconds between LLEN/ZCARD polls


def rq_noop() -> None:
    """The job the RQ baselines run: nothing, like the service's `noop` type."""


# --- small helpers --------------------------------------------------------------------------


def log(message: str = "") -> None:
    print(message, flush=True)


def parse_rq_time(value: bytes | None) -> float | None:
    if not value:
        return None
    moment = datetime.strptime(value.decode(), RQ_TIMESTAMP).replace(tzinfo=UTC)
    return moment.timestamp()


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def vm_kib(pid: int, field_name: str = "VmRSS") -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise LookupError(f"no {field_name} for pid {pid}")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """CPU time of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def http_get(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:g}s")
        time.sleep(POLL)


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_ratio(service: float, baseline: float) -> str:
    return f"{service / baseline:.3g}x" if baseline > 0 else "n/a"


# --- processes ------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Every child started by this run, each in its own session (Ctrl-C reaches only us)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.log_dir / f"{name}-{len(self.children)}.log"
        with open(log_path, "wb") as output:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        """SIGTERM to the child (its own graceful path), then SIGKILL to its whole group."""
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"   {child.name} (pid {child.pid}) ignored SIGTERM for {timeout:g}s: killing")
        _kill_group(child.pid)
        child.process.wait()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, timeout=10.0)


def _kill_group(pgid: int) -> None:
    """Wait briefly for the group's stragglers (e.g. multiprocessing's tracker), then kill them."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def child_argv(role: str, *args: object) -> list[str]:
    """A helper process running `child_main` of this module (imported as benchmarks.bench)."""
    code = "import sys; from benchmarks.bench import child_main; sys.exit(child_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, role, *map(str, args)]


# --- load generators ------------------------------------------------------------------------


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


# --- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    service: str
    baseline: str
    ratio: str


@dataclass
class DrainResult:
    finished: int
    failed: int
    span: float  # first started_at to last ended_at
    wall: str  # the same drain by the wall clock, for comparison
    cpu: str  # where the CPU went: the workers' and redis-server's, per job
    rss_kib: list[int]  # per worker process, after the drain
    hwm_kib: list[int]
    supervisor_rss_kib: int = 0

    @property
    def rate(self) -> float:
        return self.finished / self.span if self.span > 0 else 0.0


class RedisMeter:
    """What redis-server spent between construction and `report()`: CPU and commands."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cpu, self.calls = self._sample()

    def _sample(self) -> tuple[float, Counter[str]]:
        info = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), calls

    def report(self, jobs: int, seconds: float) -> str:
        cpu, calls = self._sample()
        cpu -= self.cpu
        calls.subtract(self.calls)
        calls -= Counter({"info": calls["info"]})  # our own sampling
        top = ", ".join(f"{name} {n / jobs:.2f}" for name, n in calls.most_common(5))
        return (
            f"redis-server {cpu / jobs * 1e6:.0f} µs ({cpu / seconds:.0%} of a core) and "
            f"{calls.total() / jobs:.1f} commands (scripts' own included; top: {top})"
        )


@dataclass
class HttpTarget:
    """A server under HTTP load, and the Redis list where its accepted jobs land."""

    name: str
    url: str
    server: Child
    db: int
    list_key: str


@dataclass
class OpenLoop:
    """Jobs sent on a fixed schedule: the measured ones (id -> scheduled send time) and all."""

    sent: dict[str, float] = field(default_factory=dict)
    total: int = 0  # every job sent, warm-up included: what the worker must finish
    lag: float = 0.0  # worst lateness of a measured send behind its schedule, seconds
    backlog: int = 0  # jobs still waiting in the queue when the last one was sent


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.redis = EmbeddedRedis()
        self.procs = Processes(work_dir)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.generator = "python"
        self.generator_note = ""
        self._clients: dict[int, redis.Redis] = {}
        self._registry = service_registry.load()

    # --- plumbing ---
    def db(self, number: int) -> redis.Redis:
        if number not in self._clients:
            self._clients[number] = redis.Redis(port=self.redis.port, db=number)
        return self._clients[number]

    def redis_meter(self) -> RedisMeter:
        return RedisMeter(self.db(DB_APP))

    def url(self, number: int) -> str:
        return f"{self.redis.url}/{number}"

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing from the caller's shell but PATH."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": self.url(DB_APP),
            "QUEUE_REDIS_URL": self.url(DB_SERVICE),
            "HOST": "127.0.0.1",
            **extra,
        }

    def close(self) -> None:
        self.procs.stop_all()
        for client in self._clients.values():
            client.close()
        self.redis.stop()

    def start_api(self) -> tuple[Child, str]:
        port = free_port()
        child = self.procs.start("api", [sys.executable, "-m", "service"], self.env(PORT=str(port)))
        base = f"http://127.0.0.1:{port}"
        self._wait_http(child, f"{base}/health", lambda status, _: status == 200)
        return child, base

    def start_worker(self, concurrency: int = 5) -> Child:
        port = free_port()
        env = self.env(WORKER_MODE="true", PORT=str(port), WORKER_CONCURRENCY=str(concurrency))
        child = self.procs.start("worker", [sys.executable, "-m", "service"], env)
        # /ready counts the processes that have made a first claim: all of them, or we wait.
        self._wait_http(
            child,
            f"http://127.0.0.1:{port}/ready",
            lambda status, body: status == 200 and body.get("consuming") == concurrency,
        )
        return child

    def start_baseline_server(self, kind: str, db: int) -> tuple[Child, str]:
        port = free_port()
        child = self.procs.start(
            f"serve-{kind}", child_argv(f"serve-{kind}", port, self.url(db)), self.env()
        )
        base = f"http://127.0.0.1:{port}"
        self._wait_http(child, f"{base}/health", lambda status, _: status == 200)
        return child, base

    def _wait_http(self, child: Child, url: str, ok: Callable[[int, Any], bool]) -> None:
        def check() -> bool:
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.tail()}"
                )
            try:
                return ok(*http_get(url))
            except (OSError, ValueError):
                return False

        wait_until(check, 30.0, f"{child.name} at {url}")

    def wait_finished(self, client: redis.Redis, count: int, timeout: float) -> tuple[int, int]:
        """Poll the finished and failed registries until `count` jobs are in them."""

        state = ""

        def done() -> tuple[int, int] | None:
            nonlocal state
            with client.pipeline(transaction=False) as pipe:
                pipe.zcard(FINISHED_KEY)
                pipe.zcard(FAILED_KEY)
                pipe.llen(QUEUE_KEY)
                finished, failed, waiting = pipe.execute()
            state = f"{finished} finished, {failed} failed, {waiting} waiting"
            return (finished, failed) if finished + failed >= count else None

        try:
            result: tuple[int, int] = wait_until(done, timeout, f"{count} jobs finished")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({state})") from None
        return result

    def job_times(
        self, client: redis.Redis, ids: Sequence[str], names: Sequence[str]
    ) -> list[list[float | None]]:
        """The named timestamp fields of each job hash, as epoch seconds."""
        rows: list[list[float | None]] = []
        for start in range(0, len(ids), 5000):
            with client.pipeline(transaction=False) as pipe:
                for job_id in ids[start : start + 5000]:
                    pipe.hmget(constants.job_key(job_id), list(names))
                rows += [[parse_rq_time(v) for v in values] for values in pipe.execute()]
        return rows

    def drain_span(self, client: redis.Redis, ids: Sequence[str]) -> float:
        """Seconds from the first job's started_at to the last job's ended_at."""
        times = self.job_times(client, ids, ("started_at", "ended_at"))
        starts = [t[0] for t in times if t[0] is not None]
        ends = [t[1] for t in times if t[1] is not None]
        if len(starts) != len(ids) or len(ends) != len(ids):
            raise RuntimeError(f"{len(ids) - len(ends)} jobs have no started_at or ended_at")
        return max(ends) - min(starts)

    def noop_job(self) -> jobs.NewJob:
        spec = self._registry.get("noop")
        return jobs.NewJob(jobs.new_id(), "noop", QUEUE, {}, spec.timeout, spec.max_retries)

    # --- 1 and 5: drain and memory ---
    def phase_drain(self) -> None:
        n = self.args.jobs
        n_rq = self.args.rq_jobs
        log(f"\n== drain: {n:,} no-op jobs pre-loaded, then the worker started")
        default = self.drain_service(n, concurrency=5)
        single = self.drain_service(n, concurrency=1)
        baseline = self.drain_rq(n_rq)
        for label, result in (
            ("service, 5 processes", default),
            ("service, 1 process", single),
            ("RQ SimpleWorker", baseline),
        ):
            log(
                f"   {label:<22} {result.finished:>7,} finished, {result.failed} failed: "
                f"first started_at → last ended_at {result.span:.3f} s = "
                f"{result.rate:,.0f} jobs/s ({result.wall})\n   {'':<22} {result.cpu}"
            )
        self.rows.append(
            Row(
                f"Drain {n:,} no-op jobs, jobs/s ↑ (WORKER_CONCURRENCY=5, WORKER_BATCH_SIZE=50)",
                fmt_rate(default.rate, "jobs/s"),
                f"RQ SimpleWorker ({n_rq:,} jobs): {fmt_rate(baseline.rate, 'jobs/s')}",
                fmt_ratio(default.rate, baseline.rate),
            )
        )
        self.rows.append(
            Row(
                f"Drain {n:,} no-op jobs, jobs/s ↑ (WORKER_CONCURRENCY=1: one process each)",
                fmt_rate(single.rate, "jobs/s"),
                f"RQ SimpleWorker ({n_rq:,} jobs): {fmt_rate(baseline.rate, 'jobs/s')}",
                fmt_ratio(single.rate, baseline.rate),
            )
        )
        self._memory_rows(default, baseline)

    def drain_service(self, n: int, concurrency: int) -> DrainResult:
        client = self.db(DB_SERVICE)
        client.flushdb()
        started = time.perf_counter()
        ids = asyncio.run(self._publish_noops(n))
        log(
            f"   published {n:,} jobs with the service's Store (PUBLISH script, "
            f"{PUBLISH_CHUNK} per call) in {time.perf_counter() - started:.2f} s"
        )
        assert client.llen(QUEUE_KEY) == n
        # Park the queue while the processes start, so the drain is timed at full strength.
        client.rename(QUEUE_KEY, PARKED_KEY)
        started = time.perf_counter()
        worker = self.start_worker(concurrency)
        log(
            f"   worker up, {concurrency}/{concurrency} processes consuming after "
            f"{time.perf_counter() - started:.2f} s; releasing the queue"
        )
        workers = [pid for pid in children_of(worker.pid) if "spawn_main" in cmdline(pid)]
        workers_cpu, meter = sum(map(cpu_seconds, workers)), self.redis_meter()
        released = time.perf_counter()
        client.rename(PARKED_KEY, QUEUE_KEY)
        finished, failed = self.wait_finished(client, n, timeout=max(60.0, n / 200))
        elapsed = time.perf_counter() - released
        workers_cpu = sum(map(cpu_seconds, workers)) - workers_cpu
        wall = f"release to all finished, {POLL * 1e3:.0f} ms polls: {elapsed:.3f} s"
        cpu = (
            f"CPU per job: worker processes {workers_cpu / n * 1e6:.0f} µs "
            f"({workers_cpu / elapsed:.0%} of a core); {meter.report(n, elapsed)}"
        )
        rss = [vm_kib(pid) for pid in workers]
        hwm = [vm_kib(pid, "VmHWM") for pid in workers]
        supervisor_rss = vm_kib(worker.pid)
        self.procs.stop(worker)
        span = self.drain_span(client, ids)
        return DrainResult(finished, failed, span, wall, cpu, rss, hwm, supervisor_rss)

    async def _publish_noops(self, n: int) -> list[str]:
        client = aioredis.Redis(port=self.redis.port, db=DB_SERVICE)
        store = Store(client)
        ids: list[str] = []
        try:
            for start in range(0, n, PUBLISH_CHUNK):
                chunk = [self.noop_job() for _ in range(min(PUBLISH_CHUNK, n - start))]
                await store.publish(chunk)
                ids += [job.id for job in chunk]
        finally:
            await client.aclose()
        return ids

    def drain_rq(self, n: int) -> DrainResult:
        from rq import Queue
        from rq.serializers import JSONSerializer

        client = self.db(DB_RQ)
        client.flushdb()
        queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
        started = time.perf_counter()
        ids: list[str] = []
        for start in range(0, n, BATCH_JOBS):
            count = min(BATCH_JOBS, n - start)
            ids += [j.id for j in queue.enqueue_many([Queue.prepare_data(RQ_NOOP)] * count)]
        log(
            f"   enqueued {n:,} jobs with RQ's Queue.enqueue_many in "
            f"{time.perf_counter() - started:.2f} s; starting SimpleWorker.work(burst=True)"
        )
        worker = self.procs.start(
            "rq-worker", child_argv("rq-worker", self.url(DB_RQ), "burst"), self.env()
        )
        started = time.perf_counter()
        children_cpu, meter = _children_cpu(), self.redis_meter()
        code = worker.process.wait(timeout=max(120.0, n / 50))
        elapsed = time.perf_counter() - started
        worker_cpu = _children_cpu() - children_cpu
        wall = f"process start to exit, start-up included: {elapsed:.2f} s"
        cpu = (
            f"CPU per job: worker process {worker_cpu / n * 1e6:.0f} µs with its start-up "
            f"({worker_cpu / elapsed:.0%} of a core); {meter.report(n, elapsed)}"
        )
        if code != 0:
            raise RuntimeError(f"RQ worker exited with {code}:\n{worker.tail()}")
        report = re.search(r"VmRSS=(\d+) VmHWM=(\d+)", worker.log_path.read_text())
        assert report is not None, worker.tail()
        self.procs.stop(worker)
        finished, failed = client.zcard(FINISHED_KEY), client.zcard(FAILED_KEY)
        span = self.drain_span(client, ids)
        rss, hwm = int(report.group(1)), int(report.group(2))
        return DrainResult(finished, failed, span, wall, cpu, [rss], [hwm])

    def _memory_rows(self, service: DrainResult, baseline: DrainResult) -> None:
        mib = [kib / 1024 for kib in service.rss_kib]
        rq_mib = baseline.rss_kib[0] / 1024
        mean = sum(mib) / len(mib)
        log(
            f"\n== memory after the drain (VmRSS; VmHWM is the peak)\n"
            f"   service worker processes: {', '.join(f'{m:.1f}' for m in mib)} MiB "
            f"(peaks {', '.join(f'{k / 1024:.1f}' for k in service.hwm_kib)}); "
            f"supervisor {service.supervisor_rss_kib / 1024:.1f} MiB\n"
            f"   RQ SimpleWorker: {rq_mib:.1f} MiB (peak {baseline.hwm_kib[0] / 1024:.1f})"
        )
        self.rows.append(
            Row(
                "Memory: RSS per worker process after the drain, MiB ↓",
                f"{mean:.1f} (min {min(mib):.1f}, max {max(mib):.1f}, {len(mib)} processes)",
                f"RQ SimpleWorker: {rq_mib:.1f}",
                fmt_ratio(mean, rq_mib),
            )
        )
        total = sum(mib) + service.supervisor_rss_kib / 1024
        self.rows.append(
            Row(
                f"Memory: whole worker container (supervisor + {len(mib)} processes), MiB ↓",
                f"{total:.1f}",
                f"RQ SimpleWorker: {rq_mib:.1f}",
                fmt_ratio(total, rq_mib),
            )
        )

    # --- 2: single-job publish over HTTP ---
    def phase_http(self) -> None:
        body = b'{"type":"noop"}'
        log(
            f"\n== HTTP POST /jobs {body.decode()}: {self.generator}, {HTTP_CONNECTIONS} "
            f"connections, {self.args.duration:g} s each, one server process"
        )
        api, base = self.start_api()
        target = HttpTarget("service", f"{base}/jobs", api, DB_SERVICE, QUEUE_KEY)
        service = self._measure_http(target, body, HTTP_CONNECTIONS, 1)
        self.procs.stop(api)
        server, base = self.start_baseline_server("lpush", DB_LPUSH)
        target = HttpTarget("bare Starlette + LPUSH", f"{base}/jobs", server, DB_LPUSH, LPUSH_KEY)
        lpush = self._measure_http(target, body, HTTP_CONNECTIONS, 1)
        self.procs.stop(server)
        server, base = self.start_baseline_server("rq", DB_RQ)
        target = HttpTarget("Starlette + RQ enqueue", f"{base}/jobs", server, DB_RQ, QUEUE_KEY)
        rq = self._measure_http(target, body, HTTP_CONNECTIONS, 1)
        self.procs.stop(server)
        for name, baseline in (
            ("bare Starlette + one redis.asyncio LPUSH", lpush),
            ("Starlette + RQ Queue.enqueue in a threadpool", rq),
        ):
            self.rows.append(
                Row(
                    f"HTTP POST /jobs, 2xx/s ↑ ({self.generator}, {HTTP_CONNECTIONS} connections)",
                    f"{fmt_rate(service.ok_per_second, 'req/s')} (non-2xx: {service.non_2xx})",
                    f"{name}: {fmt_rate(baseline.ok_per_second, 'req/s')} "
                    f"(non-2xx: {baseline.non_2xx})",
                    fmt_ratio(service.ok_per_second, baseline.ok_per_second),
                )
            )

    def _measure_http(
        self, target: HttpTarget, body: bytes, connections: int, jobs_per_request: int
    ) -> Load:
        """Warm up for a second, empty the database, measure, then count what Redis holds."""
        seconds = self.args.duration
        run_load(self.generator, target.url, body, connections, 1.0, self.work_dir)
        time.sleep(0.3)
        self.db(target.db).flushdb()
        server_cpu, meter = cpu_seconds(target.server.pid), self.redis_meter()
        load = run_load(self.generator, target.url, body, connections, seconds, self.work_dir)
        time.sleep(0.5)  # let the server finish the requests in flight at the cut-off
        server_cpu = cpu_seconds(target.server.pid) - server_cpu
        stored = self.db(target.db).llen(target.list_key)
        expected = load.ok * jobs_per_request
        extra = stored - expected
        slack = 0 if load.exact else connections * jobs_per_request
        verdict = "OK" if 0 <= extra <= slack else "MISMATCH"
        by_status = {k: v for k, v in load.statuses.items() if not 200 <= k < 400}
        log(
            f"   {target.name:<24} {fmt_rate(load.ok_per_second, 'req/s'):>12} 2xx "
            f"({load.ok:,} in {load.seconds:.2f} s; p50 {load.p50_ms:.1f} ms, "
            f"p99 {load.p99_ms:.1f} ms; non-2xx {load.non_2xx}{by_status or ''}; socket errors: "
            f"{load.socket_errors})"
        )
        cut = "" if load.exact else f"; in flight when wrk stopped: 0..{slack} allowed"
        log(
            f"   {'':<24} jobs in Redis {stored:,} vs accepted {expected:,}: "
            f"{extra:+,}{cut} → {verdict}"
        )
        log(
            f"   {'':<24} per job: server process {server_cpu / max(1, stored) * 1e6:.0f} µs CPU "
            f"({server_cpu / load.seconds:.0%} of a core); "
            f"{meter.report(max(1, stored), load.seconds)}"
        )
        if verdict != "OK":
            self.notes.append(
                f"{target.name}: Redis holds {stored:,} jobs for {expected:,} accepted"
            )
        return load

    # --- 3: batch publish over HTTP ---
    def phase_batch(self) -> None:
        seconds = self.args.duration
        body = orjson.dumps({"jobs": [{"type": "noop"}] * BATCH_JOBS})
        log(
            f"\n== batch publish: POST /jobs/batch with {BATCH_JOBS} no-op jobs per request, "
            f"{BATCH_CONNECTIONS} concurrent clients ({self.generator}), {seconds:g} s"
        )
        api, base = self.start_api()
        target = HttpTarget("service /jobs/batch", f"{base}/jobs/batch", api, DB_SERVICE, QUEUE_KEY)
        load = self._measure_http(target, body, BATCH_CONNECTIONS, BATCH_JOBS)
        self.procs.stop(api)
        service_rate = load.ok_per_second * BATCH_JOBS
        baseline_rate = self.enqueue_many_rate(seconds)
        log(
            f"   service: {fmt_rate(service_rate, 'jobs/s')}; RQ Queue.enqueue_many "
            f"({BATCH_JOBS} per call, one client process): "
            f"{fmt_rate(baseline_rate, 'jobs/s')}"
        )
        self.rows.append(
            Row(
                f"Batch publish, jobs/s ↑ (POST /jobs/batch x {BATCH_JOBS}, "
                f"{BATCH_CONNECTIONS} clients, one API process)",
                f"{fmt_rate(service_rate, 'jobs/s')} (non-2xx: {load.non_2xx})",
                f"RQ Queue.enqueue_many x {BATCH_JOBS}, called directly: "
                f"{fmt_rate(baseline_rate, 'jobs/s')}",
                fmt_ratio(service_rate, baseline_rate),
            )
        )

    def enqueue_many_rate(self, seconds: float) -> float:
        from rq import Queue
        from rq.serializers import JSONSerializer

        client = self.db(DB_RQ)
        client.flushdb()
        queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
        data = [Queue.prepare_data(RQ_NOOP)] * BATCH_JOBS
        queue.enqueue_many(data)  # warm-up
        client.flushdb()
        enqueued = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            enqueued += len(queue.enqueue_many(data))
        elapsed = time.perf_counter() - started
        stored = client.llen(QUEUE_KEY)
        if stored != enqueued:
            self.notes.append(f"RQ enqueue_many: {stored:,} in Redis for {enqueued:,} enqueued")
        return enqueued / elapsed

    # --- 4: enqueue-to-start latency at a fixed rate ---
    def phase_latency(self) -> None:
        # A quarter of the rate too: a rate every worker sustains (not in --quick runs).
        rates = [self.args.rate] if self.args.quick else [self.args.rate, self.args.rate / 4]
        seconds = self.args.duration
        log(
            f"\n== latency: open loop (one job every 1/rate s by the clock) for {seconds:g} s "
            f"after a 1 s warm-up, worker at defaults; latency = started_at - scheduled send"
        )
        for number, rate in enumerate(rates):
            service = self._latency_service(rate, seconds)
            baseline = self._latency_rq(rate, seconds)
            labels = ("p50", "p90", "p99", "max") if number == 0 else ("p50", "p99")
            for label in labels:
                self.rows.append(
                    Row(
                        f"Latency send → started_at at {rate:g} jobs/s, {label} ms ↓",
                        f"{service[label]:,.2f}",
                        f"RQ enqueue + SimpleWorker: {baseline[label]:,.2f}",
                        fmt_ratio(service[label], baseline[label]),
                    )
                )

    def _latency_service(self, rate: float, seconds: float) -> dict[str, float]:
        client = self.db(DB_SERVICE)
        client.flushdb()
        worker = self.start_worker()
        meter, started = self.redis_meter(), time.perf_counter()
        run = asyncio.run(self._open_loop_service(rate, seconds))
        self.wait_finished(client, run.total, timeout=60.0 + run.total / 100)
        usage = meter.report(run.total, time.perf_counter() - started)
        self.procs.stop(worker)
        return self._latencies(f"service @ {rate:g}/s", client, run, usage)

    def _latency_rq(self, rate: float, seconds: float) -> dict[str, float]:
        client = self.db(DB_RQ)
        client.flushdb()
        argv = child_argv("rq-worker", self.url(DB_RQ), "run")
        worker = self.procs.start("rq-worker", argv, self.env())
        wait_until(lambda: client.scard(f"rq:workers:{QUEUE}") > 0, 30.0, "RQ worker registered")
        meter, started = self.redis_meter(), time.perf_counter()
        run = self._open_loop_rq(rate, seconds)
        self.wait_finished(client, run.total, timeout=60.0 + run.total / 20)
        usage = meter.report(run.total, time.perf_counter() - started)
        self.procs.stop(worker)
        return self._latencies(f"RQ @ {rate:g}/s", client, run, usage)

    async def _open_loop_service(self, rate: float, seconds: float) -> OpenLoop:
        """Publish one job every 1/rate s by the clock, never waiting for the previous one."""
        client = aioredis.Redis(port=self.redis.port, db=DB_SERVICE)
        store = Store(client)
        run = OpenLoop()
        tasks: set[asyncio.Task[None]] = set()
        try:
            await store.publish([self.noop_job()])  # load the script, open a connection
            run.total += 1
            start = time.time() + 0.05
            for i in range(int(rate * (seconds + 1))):
                scheduled = start + i / rate
                delay = scheduled - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                job = self.noop_job()
                if i >= rate:  # the first second is a warm-up
                    run.sent[job.id] = scheduled
                    run.lag = max(run.lag, time.time() - scheduled)
                task = asyncio.create_task(store.publish([job]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                run.total += 1
            await asyncio.gather(*tasks)
            run.backlog = await client.llen(QUEUE_KEY)
        finally:
            await client.aclose()
        return run

    def _open_loop_rq(self, rate: float, seconds: float) -> OpenLoop:
        """The same schedule into RQ (a synchronous enqueue; lateness counts in the latency)."""
        from rq import Queue
        from rq.serializers import JSONSerializer

        queue = Queue(QUEUE, connection=self.db(DB_RQ), serializer=JSONSerializer)
        queue.enqueue(RQ_NOOP)
        run = OpenLoop(total=1)
        start = time.time() + 0.05
        for i in range(int(rate * (seconds + 1))):
            scheduled = start + i / rate
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            if i >= rate:
                run.lag = max(run.lag, time.time() - scheduled)
                run.sent[queue.enqueue(RQ_NOOP).id] = scheduled
            else:
                queue.enqueue(RQ_NOOP)
            run.total += 1
        run.backlog = self.db(DB_RQ).llen(QUEUE_KEY)
        return run

    def _latencies(
        self, name: str, client: redis.Redis, run: OpenLoop, usage: str
    ) -> dict[str, float]:
        ids = list(run.sent)
        times = self.job_times(client, ids, ("enqueued_at", "started_at"))
        if any(t[0] is None or t[1] is None for t in times):
            raise RuntimeError(f"{name}: some jobs have no enqueued_at or started_at")
        send_to_start = sorted(
            ((t[1] or 0.0) - run.sent[job_id]) * 1e3 for job_id, t in zip(ids, times, strict=True)
        )
        queued_to_start = sorted(((t[1] or 0.0) - (t[0] or 0.0)) * 1e3 for t in times)
        figures = {
            label: percentile(send_to_start, p)
            for label, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        }
        log(
            f"   {name:<16} send → started_at ms: p50 {figures['p50']:,.2f}, "
            f"p90 {figures['p90']:,.2f}, p99 {figures['p99']:,.2f}, max {figures['max']:,.2f} "
            f"({len(ids):,} jobs); enqueued_at → started_at p50 "
            f"{percentile(queued_to_start, 50):,.2f}, p99 {percentile(queued_to_start, 99):,.2f}; "
            f"client's worst lateness {run.lag * 1e3:.2f} ms; {run.backlog:,} jobs waiting "
            f"when the last was sent\n   {'':<16} per job: {usage}"
        )
        rate = len(ids) / self.args.duration
        if run.backlog > rate / 2:
            self.notes.append(
                f"{name}: the worker fell behind ({run.backlog:,} jobs waiting when the last was "
                f"sent), so these latencies measure a growing backlog and grow with --duration"
            )
        return figures

    # --- report ---
    def machine(self) -> list[str]:
        model = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        info = self.db(DB_APP).info("server")
        versions = []
        for package in ("rq", "redis", "starlette", "uvicorn", "uvloop", "httptools"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions.append(f"{package} {metadata.version(package)}")
        return [
            f"- Machine: {len(os.sched_getaffinity(0))} CPUs (nproc), {model}; "
            f"{platform.system()} {platform.release()}",
            f"- Redis {info['redis_version']} (private redis-server, shared by every figure); "
            f"Python {platform.python_version()}; {', '.join(versions)}",
            f"- HTTP load generator: {self.generator_note}",
            f"- Command: {' '.join(sys.argv)}",
        ]

    def report(self) -> str:
        lines = [
            f"# Benchmark results ({datetime.now(UTC):%Y-%m-%d %H:%M UTC})",
            "",
            *self.machine(),
            "",
            "| Figure | Service | Baseline (same run, same Redis) | Ratio service/baseline |",
            "|---|---|---|---|",
            *(f"| {r.figure} | {r.service} | {r.baseline} | {r.ratio} |" for r in self.rows),
            "",
            "↑ higher is better, ↓ lower is better. How each figure is measured:",
            "- Drain: from the first job's `started_at` to the last job's `ended_at` (job "
            "hashes), so worker start-up is excluded; the service's pre-loaded queue is parked "
            "until every worker process is consuming. RQ drains fewer jobs (it is slower).",
            "- HTTP: one server process each, warmed up for 1 s; jobs in Redis are checked "
            "against the 2xx count after each run (see the log for the check and CPU per job).",
            "- Latency: open loop, one job every 1/rate s by the clock, sent straight to Redis "
            "(service: its Store's PUBLISH script; RQ: `Queue.enqueue`); latency is the job's "
            "`started_at` minus its scheduled send time; the first second is a warm-up.",
        ]
        lines += [f"- Warning: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


# --- helper processes (run through `child_argv`) --------------------------------------------


def child_main(argv: list[str]) -> int:
    role, *args = argv
    if role == "rq-worker":
        return _rq_worker(args[0], burst=args[1] == "burst")
    if role in ("serve-lpush", "serve-rq"):
        _serve_baseline(role.removeprefix("serve-"), int(args[0]), args[1])
        return 0
    raise SystemExit(f"unknown role {role!r}")


def _rq_worker(url: str, *, burst: bool) -> int:
    """Plain RQ: a SimpleWorker with the JSON serializer. Logging at WARNING: no line per job,
    like the service at its default LOG_LEVEL (it logs jobs at DEBUG)."""
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(url)
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    worker.work(burst=burst, logging_level="WARNING")
    pid = os.getpid()
    print(f"VmRSS={vm_kib(pid)} VmHWM={vm_kib(pid, 'VmHWM')}", flush=True)
    return 0


def _serve_baseline(kind: str, port: int, url: str) -> None:
    """A bare Starlette app, served like the service's (same uvicorn settings)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def json_response(content: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status, media_type="application/json")

    if kind == "lpush":
        client = aioredis.Redis.from_url(url)

        async def submit(request: Request) -> Response:
            await client.lpush(LPUSH_KEY, await request.body())
            return json_response({"status": "queued"}, 202)

    else:
        from rq import Queue
        from rq.serializers import JSONSerializer

        queue = Queue(QUEUE, connection=redis.Redis.from_url(url), serializer=JSONSerializer)

        async def submit(request: Request) -> Response:
            orjson.loads(await request.body())
            job = await run_in_threadpool(queue.enqueue, RQ_NOOP)
            return json_response({"id": job.id, "status": "queued"}, 202)

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    app = Starlette(routes=[Route("/jobs", submit, methods=["POST"]), Route("/health", health)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run()


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, help="jobs in the drain (default 20000; quick 2000)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 10; quick 3)")
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases: {','.join(PHASES)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs/s in the latency phase")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load generator (auto: wrk when on PATH)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/latest.md")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (2000 if args.quick else 20000)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rq_jobs = max(500, args.jobs // 10)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {PHASES}")
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
        if args.loadgen == "python":
            bench.generator_note = "python (asyncio fallback, chosen with --loadgen python)"
        elif shutil.which("wrk"):
            bench.generator = "wrk"
            bench.generator_note = f"wrk ({shutil.which('wrk')})"
        else:
            bench.generator_note = "python (asyncio fallback: wrk is not on PATH)"
        try:
            bench.redis.start()
            log(
                f"private redis-server on port {bench.redis.port} (pid {bench.redis.pid}); "
                f"phases: {', '.join(args.phases)}; load generator: {bench.generator}"
            )
            if "drain" in args.phases or "memory" in args.phases:
                bench.phase_drain()  # memory is read right after the drain
            if "http" in args.phases:
                bench.phase_http()
            if "batch" in args.phases:
                bench.phase_batch()
            if "latency" in args.phases:
                bench.phase_latency()
            table = bench.report()
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
    log(f"\n{table}\n(total {time.monotonic() - started:.0f} s; table written to {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
