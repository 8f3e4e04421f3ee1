"""CANCEL (cancel.lua): DELETE /jobs/{id}. A queued or scheduled job ends canceled at once; a
started one is asked to stop (RQ's `stop-job` command to its worker), and ends canceled when
its worker has stopped it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.config.settings import Retention
from service.jobs import records
from service.store import scripts
from service.store.connection import Direct, Script

Result = Literal["canceled", "canceling", "conflict", "missing"]
_RESULTS: dict[bytes, Result] = {
    b"canceled": "canceled",
    b"canceling": "canceling",
    b"conflict": "conflict",
    b"missing": "missing",
}


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What a cancel did, and the job's status ('' for a missing job). A conflict is a job
    that has ended already (or that another tool moved)."""

    result: Result
    status: str


class Cancel:
    script = Script(scripts.CANCEL)

    def __init__(self, retention: Retention) -> None:
        self._limits = retention.args()

    async def __call__(self, direct: Direct, job_id: str, now: float) -> Cancellation:
        args = [job_id, now, records.utc_iso(now), *self._limits]
        result, status = await self.script(direct, args)
        return Cancellation(_RESULTS[result], status.decode())
