"""A job service on Redis: an HTTP publisher and a worker, one package, RQ's data model."""

from service.context import AsyncJobContext, JobContext
from service.registry import job

__all__ = ["AsyncJobContext", "JobContext", "job"]
