"""Shared pieces of the benchmarks: names, small helpers, and the child processes we start.

Nothing here knows about a particular measurement; every phase module imports from here.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

QUEUE = "app-queue"  # the service's default QUEUE_NAME; the RQ baselines use it too (own db)
RQ_NOOP = "benchmarks.baselines.rq_noop"  # what the RQ baselines enqueue
RQ_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"

# Redis databases: the service's application data (REDIS_URL) and its queue (QUEUE_REDIS_URL),
# plain RQ's baselines, the bare LPUSH baseline, and the peers. One redis-server for all.
DB_APP, DB_SERVICE, DB_RQ, DB_LPUSH, DB_PEERS = 0, 1, 2, 3, 4
POLL = 0.05  # seconds between LLEN/ZCARD polls


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


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = POLL) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:g}s")
        time.sleep(poll)


def http_get(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_ratio(service: float, baseline: float) -> str:
    return f"{service / baseline:.3g}x" if baseline > 0 else "n/a"


# --- /proc ----------------------------------------------------------------------------------


def vm_kib(pid: int, field_name: str = "VmRSS") -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise LookupError(f"no {field_name} for pid {pid}")


def smaps_kib(pid: int) -> dict[str, int]:
    """Pss (shared pages split between their users) and Private (this process's alone), KiB.

    RSS counts every shared page (the interpreter, shared libraries) in full in each process.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return {
        "Pss": fields.get("Pss", 0),
        "Private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


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


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def worker_pids(supervisor: int) -> list[int]:
    """The service's worker processes: the supervisor's multiprocessing (spawn) children."""
    return [pid for pid in children_of(supervisor) if "spawn_main" in cmdline(pid)]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


# --- child processes ------------------------------------------------------------------------


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

    def kill(self, child: Child) -> None:
        """SIGKILL to the child's whole group at once, as a crash would: no graceful path."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
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


def baseline_argv(role: str, *args: object) -> list[str]:
    """A helper process of `benchmarks/baselines.py` (RQ worker, bare servers)."""
    return [sys.executable, "-m", "benchmarks.baselines", role, *map(str, args)]
