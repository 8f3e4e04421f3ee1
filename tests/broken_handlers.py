"""A job type whose payload model has a bug (loaded only by tests/system/test_abuse.py's API
process): its validator raises something pydantic does not turn into a validation error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from service import JobContext, job

SECRET = "secret-detail /srv/app/payloads.py line 42"


class Touchy(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _buggy(cls, data: Any) -> Any:
        raise RuntimeError(SECRET)


@job("test.broken")
def broken(payload: Touchy, ctx: JobContext) -> None:
    """Never runs: its payload cannot be validated."""
