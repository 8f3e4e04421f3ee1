"""A job type for failover tests (HANDLER_MODULES=tests.failover_handlers): it notes each run in
a file outside Redis, which a failover cannot roll back."""

from __future__ import annotations

import os

from pydantic import BaseModel

from service import JobContext, job


class Ledger(BaseModel):
    path: str


@job("test.ledger", max_retries=3)
def ledger(payload: Ledger, ctx: JobContext) -> int:
    """Appends `<id> <attempt>` to `payload.path` (one write of a short line: atomic)."""
    fd = os.open(payload.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)
    return ctx.attempt
