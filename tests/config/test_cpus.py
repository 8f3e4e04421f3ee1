"""The CPUs a container may use, from its cgroup quota: what WORKER_PROCESSES defaults to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import cpus


def write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text + "\n")


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000"}, 1.5),  # cgroup v2: 1.5 CPUs
        ({"cpu.max": "max 100000"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "80000", "cpu/cpu.cfs_period_us": "100000"}, 0.8),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, none
        ({}, None),  # no cgroup files at all
    ],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    assert cpus.cgroup_quota(tmp_path) == quota


def test_available_rounds_the_quota_up_within_the_cpus_the_process_may_run_on(
    tmp_path: Path,
) -> None:
    schedulable = len(os.sched_getaffinity(0))
    write(tmp_path, "cpu.max", "80000 100000")
    assert cpus.available(tmp_path) == 1  # 0.8 CPU: one process, never none
    write(tmp_path, "cpu.max", "150000 100000")
    assert cpus.available(tmp_path) == min(2, schedulable)
    write(tmp_path, "cpu.max", f"{1000 * 100000} 100000")
    assert cpus.available(tmp_path) == schedulable  # a quota above the machine's CPUs
    write(tmp_path, "cpu.max", "max 100000")
    assert cpus.available(tmp_path) == schedulable
