"""A handler module that imports nothing heavy (HANDLER_MODULES=tests.lean_handlers): what a
worker process imports with it is the worker's own doing."""

from __future__ import annotations

import sys

from service import JobContext, job
from service.jobs.registry import EmptyPayload


@job("test.modules")
def modules(payload: EmptyPayload, ctx: JobContext) -> list[str]:
    """The modules this worker process has imported so far."""
    return sorted(sys.modules)
