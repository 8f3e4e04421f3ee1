"""A job service on Redis: an HTTP publisher and a worker, one package, RQ's data model."""

from service.jobs.context import AsyncJobContext, JobContext
from service.jobs.registry import job
from service.jobs.schedule import Schedule

__all__ = ["AsyncJobContext", "JobContext", "Schedule", "job"]
