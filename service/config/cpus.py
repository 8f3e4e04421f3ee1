"""How many CPUs this process may use: what WORKER_PROCESSES defaults to.

A container limited to 1.5 CPUs still sees every CPU of its host in `os.cpu_count()`; its
limit is a cgroup quota. Read it as cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us` over
`cpu.cfs_period_us`), rounded up, within the CPUs the process may be scheduled on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use, at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus or 1, math.ceil(quota))
    return max(1, cpus or 1)


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs (1.5 for 150 ms per 100 ms), or None when there is none."""
    for path in (root / "cpu.max", root / _own_cgroup() / "cpu.max"):  # v2
        text = _read(path)
        if text is not None:
            quota, _, period = text.partition(" ")
            return _ratio(quota, period)
    quota_text = _read(root / "cpu" / "cpu.cfs_quota_us")  # v1
    period_text = _read(root / "cpu" / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    return _ratio(quota_text, period_text)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value, per = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return value / per if value > 0 and per > 0 else None


def _own_cgroup() -> str:
    """This process's cgroup v2 path (`0::/path` in /proc/self/cgroup), relative."""
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
