"""What redis-server spends per job: CPU time from `INFO cpu`, commands from `INFO commandstats`.

Read before and after a run; the difference divided by the jobs is the per-job cost, and
1 s / (CPU per job) is how many jobs/s one Redis core could sustain on that path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class RedisCost:
    """Redis's side of one run: CPU seconds and command counts spent on `jobs` jobs."""

    jobs: int
    seconds: float  # wall-clock length of the run
    cpu: float  # used_cpu_sys + used_cpu_user, seconds
    calls: Counter[str]  # per command, scripts' inner calls included

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu / self.jobs * 1e6 if self.jobs else float("nan")

    @property
    def commands_per_job(self) -> float:
        return self.calls.total() / self.jobs if self.jobs else float("nan")

    @property
    def jobs_per_core(self) -> float:
        """Jobs/s one fully busy Redis core would sustain at this CPU cost per job."""
        return self.jobs / self.cpu if self.cpu > 0 else float("nan")

    def describe(self) -> str:
        top = ", ".join(f"{name} {n / self.jobs:.2f}" for name, n in self.calls.most_common(5))
        share = self.cpu / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"redis-server {self.cpu_us_per_job:.0f} µs ({share:.0%} of a core) and "
            f"{self.commands_per_job:.1f} commands (scripts' own included; top: {top})"
        )


class RedisMeter:
    """Reads redis-server's counters at construction; `cost()` returns what was spent since."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cpu, self.calls = self._sample()

    def _sample(self) -> tuple[float, Counter[str]]:
        info = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), calls

    def cost(self, jobs: int, seconds: float) -> RedisCost:
        cpu, calls = self._sample()
        calls.subtract(self.calls)
        calls -= Counter({"info": calls["info"]})  # our own sampling
        return RedisCost(jobs, seconds, cpu - self.cpu, +calls)

    def report(self, jobs: int, seconds: float) -> str:
        return self.cost(jobs, seconds).describe()
