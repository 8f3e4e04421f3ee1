"""PAUSE (pause.lua): stop or restart the claiming of a named queue's jobs, its three
priorities together. Publishing is not affected, and jobs already claimed run."""

from __future__ import annotations

from service.config import queues
from service.store import scripts
from service.store.connection import Direct, Script


class Pause:
    script = Script(scripts.PAUSE)

    async def __call__(self, direct: Direct, base: str, paused: bool) -> bool:
        """Pause (or resume) the named queue `base`; whether that changed its state."""
        rq_queues = [queues.concrete(base, priority) for priority in queues.PRIORITIES]
        changed: int = await self.script(direct, ["1" if paused else "0", *rq_queues])
        return changed > 0
