"""Run the service under a scripted load, scrape its metrics, draw the dashboard to a PNG.

    .venv/bin/python benchmarks/dashboard.py                    # about 90 s
    .venv/bin/python benchmarks/dashboard.py --from-csv      # redraw the last run's CSV

Starts a private redis-server (EmbeddedRedis, a free port; never the Redis on 6379), one API
process and one worker container (`python -m service`) running benchmarks/demo_handlers.py,
drives a load in phases (steady, a low-priority bulk import above capacity, a worker process
SIGKILLed, a dependency outage that fills the dead-letter queue, recovery), scrapes both
/metrics endpoints every second, writes every sample to a CSV (git-ignored) and draws the
Grafana dashboard's main panels from them (benchmarks/dashboard_plot.py, matplotlib).
Every process started here is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import platform
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/dashboard.py` works as well as `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.demo_handlers import OUTAGE_KEY  # noqa: E402
from service.config import constants  # noqa: E402
from service.config.queues import PRIORITIES, concrete  # noqa: E402
from service.dev.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUEUE = "app-queue"  # the service's default QUEUE_NAME, which every demo job type uses
CONCURRENCY = 3  # worker processes in the container
INTERVAL_MS = 1000  # WORKER_PROCESSING_INTERVAL: how often the backlog gauges are refreshed
SCRAPE_SECONDS = 1.0
TICK = 0.1  # seconds between two rounds of sends
SENDERS = 8  # HTTP client threads (open loop: a slow API makes the queue of sends grow)
IMPORT_BATCH = 50  # jobs per POST /jobs/batch of the bulk import
# Steady traffic, one POST /jobs per job: (type, share, options).
MIX: tuple[tuple[str, float, dict[str, Any]], ...] = (
    ("demo.work", 0.63, {}),
    ("demo.work", 0.07, {"priority": "high"}),
    ("demo.flaky", 0.20, {}),
    ("demo.slow", 0.10, {}),
)
BAD_CLIENT_EVERY = 2.0  # seconds between two invalid submissions (a 422 trickle)


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    rate: float  # steady jobs/s
    imports: float = 0.0  # bulk-import jobs/s, through POST /jobs/batch, low priority
    outage: bool = False  # demo.flaky's dependency is down
    kill_after: float | None = None  # SIGKILL one worker process this far into the phase
    until_empty: float = 0.0  # go on past `seconds` until no job waits, at most this long


def phases(scale: float, rate: float, imports: float) -> list[Phase]:
    """The default script; `scale` stretches every phase. The drain lasts until the queue is
    empty (at most 45 s): how long depends on the machine, and the picture must show it end."""
    return [
        Phase("steady", 15 * scale, rate),
        Phase("bulk import", 8 * scale, rate, imports=imports),
        Phase("drain", 15 * scale, rate, kill_after=5 * scale, until_empty=45 * scale),
        Phase("outage", 12 * scale, rate, outage=True),
        Phase("recovery", 15 * scale, rate),
    ]


def log(message: str) -> None:
    print(message, flush=True)


# --- processes ------------------------------------------------------------------------------


class Services:
    """The private Redis, the API and the worker container; `stop()` ends all of them."""

    def __init__(self, log_dir: Path, concurrency: int) -> None:
        self.redis = EmbeddedRedis()
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.children: list[subprocess.Popen[bytes]] = []
        self.api_url = self.worker_url = ""

    def start(self) -> None:
        self.redis.start()
        api_port, worker_port = free_port(), free_port()
        api = self._spawn("api", PORT=str(api_port))
        self.api_url = f"http://127.0.0.1:{api_port}"
        self._wait(api, f"{self.api_url}/health", lambda body: True)
        worker = self._spawn(
            "worker",
            PORT=str(worker_port),
            WORKER_MODE="true",
            WORKER_CONCURRENCY=str(self.concurrency),
        )
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        self._wait(worker, f"{self.worker_url}/ready", lambda b: b["consuming"] == self.concurrency)

    def _spawn(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": f"{self.redis.url}/0",
            "QUEUE_REDIS_URL": f"{self.redis.url}/1",
            "HOST": "127.0.0.1",
            "HANDLER_MODULES": "benchmarks.demo_handlers",
            "WORKER_PROCESSING_INTERVAL": str(INTERVAL_MS),
            "LOG_LEVEL": "WARNING",  # failures only: the retries, timeouts and the lost worker
            **env,
        }
        with open(self.log_dir / f"dashboard-{name}.log", "wb") as output:
            child = subprocess.Popen(
                [sys.executable, "-m", "service"],
                env=environment,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop it ourselves
            )
        self.children.append(child)
        return child

    def _wait(self, child: subprocess.Popen[bytes], url: str, ok: Callable[[Any], bool]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {child.returncode}")
            with (
                contextlib.suppress(OSError, ValueError, KeyError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200 and ok(json.load(response)):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{url} not ready within 60 s")

    def kill_worker_process(self) -> int:
        """SIGKILL one of the worker container's processes (not the supervisor)."""
        supervisor = self.children[1].pid
        candidates = [
            pid
            for pid in _children(supervisor)
            if b"spawn_main" in _cmdline(pid) and b"resource_tracker" not in _cmdline(pid)
        ]
        if not candidates:
            raise RuntimeError(f"no worker process found under the supervisor (pid {supervisor})")
        os.kill(candidates[0], signal.SIGKILL)
        return candidates[0]

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    log(f"pid {child.pid} ignored SIGTERM for 30 s: killing its group")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # stragglers in its session, if any
            child.wait()
        self.children.clear()
        self.redis.stop()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- load -----------------------------------------------------------------------------------


class Sender:
    """Open-loop HTTP client: `post()` queues a request; SENDERS threads send them over
    keep-alive connections and count the answers by status."""

    def __init__(self, base_url: str) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.pending: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(SENDERS)]
        for thread in self.threads:
            thread.start()

    def post(self, path: str, body: dict[str, Any]) -> None:
        self.pending.put((path, json.dumps(body).encode()))

    def close(self) -> None:
        for _ in self.threads:
            self.pending.put(None)
        for thread in self.threads:
            thread.join(30)

    def _run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        while (item := self.pending.get()) is not None:
            path, body = item
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                status = 0
            with self._lock:
                self.statuses[status] += 1
        connection.close()


class Driver:
    """Sends each phase's jobs on a fixed clock (every TICK), whatever the API's pace."""

    def __init__(self, sender: Sender, services: Services, recorder: Recorder, seed: int) -> None:
        self.sender = sender
        self.services = services
        self.recorder = recorder
        self.random = random.Random(seed)
        self.app = redis.Redis.from_url(services.redis.url + "/0")
        self.queues = redis.Redis.from_url(services.redis.url + "/1")
        self.sent = Counter[str]()

    def run(self, script: list[Phase]) -> None:
        try:
            for phase in script:
                self.recorder.event("phase", phase=phase.name)
                log(f"{self.recorder.now():5.1f}s  {phase.name}")
                if phase.outage:
                    self.app.set(OUTAGE_KEY, 1)
                self._run_phase(phase)
                self.app.delete(OUTAGE_KEY)
        finally:
            self.app.close()
            self.queues.close()

    def waiting(self) -> int:
        """Jobs waiting in the queue's three priority lists."""
        with self.queues.pipeline(transaction=False) as pipe:
            for priority in PRIORITIES:
                pipe.llen(constants.queue_key(concrete(QUEUE, priority)))
            return sum(pipe.execute())

    def _over(self, phase: Phase, elapsed: float) -> bool:
        if elapsed < phase.seconds:
            return False
        return elapsed >= phase.until_empty or self.waiting() == 0

    def _run_phase(self, phase: Phase) -> None:
        started = time.monotonic()
        owed = {"steady": 0.0, "imports": 0.0, "bad": 0.0}
        killed = phase.kill_after is None
        tick = 0
        while not self._over(phase, elapsed := time.monotonic() - started):
            owed["steady"] += phase.rate * TICK
            owed["imports"] += phase.imports * TICK
            owed["bad"] += TICK / BAD_CLIENT_EVERY
            while owed["steady"] >= 1:
                owed["steady"] -= 1
                self._send_one()
            while owed["imports"] >= IMPORT_BATCH:
                owed["imports"] -= IMPORT_BATCH
                jobs = [{"type": "demo.import"}] * IMPORT_BATCH
                self.sender.post("/jobs/batch", {"jobs": jobs})
                self.sent["demo.import"] += IMPORT_BATCH
            if owed["bad"] >= 1:  # a client with a bug: demo.work takes no payload (422)
                owed["bad"] -= 1
                self.sender.post("/jobs", {"type": "demo.work", "payload": {"x": 1}})
                self.sent["invalid"] += 1
            if not killed and phase.kill_after is not None and elapsed >= phase.kill_after:
                pid = self.services.kill_worker_process()
                self.recorder.event("sigkill", pid=str(pid))
                log(f"{self.recorder.now():5.1f}s  SIGKILL worker process {pid}")
                killed = True
            tick += 1
            time.sleep(max(0.0, started + tick * TICK - time.monotonic()))

    def _send_one(self) -> None:
        job_type, _, options = self.random.choices(MIX, weights=[m[1] for m in MIX])[0]
        self.sender.post("/jobs", {"type": job_type, **options})
        self.sent[job_type] += 1


# --- scraping -------------------------------------------------------------------------------


class Recorder:
    """Writes every scraped sample, and the run's events, as CSV rows:
    t (seconds since the start), source (api, worker, run), name, labels (JSON), value."""

    HEADER = ("t", "source", "name", "labels", "value")

    def __init__(self, output: IO[str]) -> None:
        self.started = time.monotonic()
        self._writer = csv.writer(output)
        self._writer.writerow(self.HEADER)
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.started

    def rows(self, source: str, t: float, rows: list[tuple[str, dict[str, str], float]]) -> None:
        with self._lock:
            for name, labels, value in rows:
                self._writer.writerow(
                    (f"{t:.3f}", source, name, json.dumps(labels, sort_keys=True), repr(value))
                )

    def event(self, name: str, **labels: str) -> None:
        self.rows("run", self.now(), [(name, labels, 0.0)])


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The service's own samples (service_*) of one /metrics page; not the `_created` time
    stamps prometheus_client adds to counters and histograms (no query reads them)."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("service_") and not sample.name.endswith("_created")
    ]


def scrape_loop(targets: dict[str, str], recorder: Recorder, stop: threading.Event) -> None:
    """Every SCRAPE_SECONDS by the clock, each target in turn; a failed scrape is a gap."""
    due = time.monotonic()
    while not stop.is_set():
        for source, url in targets.items():
            try:
                rows = scrape(url)
            except OSError as exc:
                log(f"{recorder.now():5.1f}s  scrape of {source} failed: {exc}")
                continue
            recorder.rows(source, recorder.now(), rows)
        due += SCRAPE_SECONDS
        stop.wait(max(0.0, due - time.monotonic()))


# --- the run --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu_model": model,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run(args: argparse.Namespace) -> None:
    script = phases(args.scale, args.rate, args.imports)
    services = Services(args.csv.parent, args.concurrency)
    stop = threading.Event()
    with open(args.csv, "w", newline="") as output:
        recorder = Recorder(output)
        try:
            services.start()
            log(f"Redis {services.redis.url}, API {services.api_url}, worker {services.worker_url}")
            recorder.event(
                "meta",
                concurrency=str(args.concurrency),
                interval_ms=str(INTERVAL_MS),
                scrape_seconds=str(SCRAPE_SECONDS),
                redis=services.redis.binary or "fakeredis",
                **machine(),
            )
            targets = {
                "api": f"{services.api_url}/metrics",
                "worker": f"{services.worker_url}/metrics",
            }
            scraper = threading.Thread(target=scrape_loop, args=(targets, recorder, stop))
            scraper.start()
            sender = Sender(services.api_url)
            driver = Driver(sender, services, recorder, args.seed)
            try:
                driver.run(script)
                recorder.event("phase", phase="load stopped")
                stop.wait(args.tail)
            finally:
                stop.set()
                sender.close()
                scraper.join()
            recorder.event("end")
            log(f"jobs sent: {dict(driver.sent)}; answers by status: {dict(sender.statuses)}")
        finally:
            services.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--csv", type=Path, default=RESULTS / "dashboard.csv")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--from-csv", action="store_true", help="redraw --csv; run nothing")
    parser.add_argument("--scale", type=float, default=1.0, help="stretch every phase by this")
    parser.add_argument("--rate", type=float, default=40.0, help="steady jobs/s (default 40)")
    parser.add_argument("--imports", type=float, default=150.0, help="bulk-import jobs/s")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, choices=range(2, 6))
    parser.add_argument("--tail", type=float, default=4.0, help="seconds scraped after the load")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from benchmarks import dashboard_plot  # matplotlib: fail before a 90 s run, not after
    except ImportError as exc:
        log(f"{exc}: install the plotting extra first: .venv/bin/pip install -e '.[plot]'")
        return 1
    if not args.from_csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        try:
            with interruptible():
                run(args)
        except KeyboardInterrupt:
            log("interrupted: every process started by this run was stopped")
            return 130
    args.png.parent.mkdir(parents=True, exist_ok=True)
    dashboard_plot.render(args.csv, args.png)
    log(f"samples in {args.csv}; dashboard in {args.png} ({args.png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
