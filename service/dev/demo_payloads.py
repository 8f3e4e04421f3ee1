"""Payload models of the built-in job types (service/dev/demo.py names them by import string,
so a worker process imports them, and pydantic, only when it runs one of these types)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnyObject(BaseModel):
    model_config = ConfigDict(extra="allow")


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=3600)


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="failed on purpose", max_length=1000)
