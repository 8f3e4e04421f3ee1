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
    usec: Counter[str]  # Redis's own time per command (a script's includes its inner calls)

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

    def top_commands(self, count: int = 6) -> str:
        """The commands that took Redis the most time, per job: `name calls/job µs/job`."""
        return ", ".join(
            f"{name} {self.calls[name] / self.jobs:.2f}x {us / self.jobs:.1f} µs"
            for name, us in self.usec.most_common(count)
        )

    def describe(self) -> str:
        share = self.cpu / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"redis-server {self.cpu_us_per_job:.0f} µs ({share:.0%} of a core) and "
            f"{self.commands_per_job:.1f} commands (scripts' own included; by time: "
            f"{self.top_commands()})"
        )


class RedisMeter:
    """Reads redis-server's counters at construction; `cost()` returns what was spent since."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cpu, self.calls, self.usec = self._sample()

    def _sample(self) -> tuple[float, Counter[str], Counter[str]]:
        info = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            calls[name], usec[name] = int(value["calls"]), int(value["usec"])
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), calls, usec

    def cost(self, jobs: int, seconds: float) -> RedisCost:
        cpu, calls, usec = self._sample()
        calls.subtract(self.calls)
        usec.subtract(self.usec)
        for counter in (calls, usec):
            counter["info"] = 0  # our own sampling
        return RedisCost(jobs, seconds, cpu - self.cpu, +calls, +usec)

    def report(self, jobs: int, seconds: float) -> str:
        return self.cost(jobs, seconds).describe()
