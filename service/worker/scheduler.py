"""The worker container's scheduler: a thread of the supervisor that declares the schedules
of the job types in code at start, then, about once a second, fires the due ones.

Every container runs one; none is special. Each fire time is claimed atomically in Redis
(service/store/schedules.py), so however many containers tick, start, crash or restart, a
fire time publishes its job once.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from service.config import constants
from service.config.settings import Settings
from service.jobs.registry import Registry
from service.store.connection import connect
from service.store.schedules import Definition, Schedules

log = logging.getLogger("service.worker")


def definitions(settings: Settings, registry: Registry) -> list[Definition]:
    """The schedules the job types declare (`@job(schedule=...)`), with their jobs' policies."""
    return [
        Definition.of(job_type, declared, settings.queue_name)
        for job_type in registry
        for declared in job_type.schedules
    ]


class Scheduler:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.job_types = set(registry.names())
        self.declared = definitions(settings, registry)
        self.unreadable: set[str] = set()
        self.taken: set[str] = set()

    def declare(self, schedules: Schedules) -> None:
        """Declare this code's schedules, and remove those of its job types it no longer
        declares."""
        answers = schedules.declare(self.declared, time.time())
        retired = schedules.retire(self.job_types, {d.id for d in self.declared})
        for definition, answer in zip(self.declared, answers, strict=True):
            if answer == "taken" and definition.id not in self.taken:
                self.taken.add(definition.id)  # warned once, not every minute
                log.warning(
                    "schedule %s: a schedule created through the API holds this id; the "
                    "code's declaration is not applied (rename it, or delete the API's)",
                    definition.id,
                )
        if answers.count("new") or answers.count("changed") or retired:
            log.info(
                "schedules declared: %d (%d new, %d changed), %d removed: %s",
                len(answers),
                answers.count("new"),
                answers.count("changed"),
                len(retired),
                ",".join(retired) or "-",
            )

    def run(self, stop: threading.Event) -> None:
        """Declare, then tick every SCHEDULE_TICK_SECONDS until `stop` is set, declaring again
        every SCHEDULE_DECLARE_SECONDS. Redis being out of reach only delays both: the next
        tick tries again."""
        client = connect(self.settings.queue_redis)
        schedules = Schedules(client)
        next_declare = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_declare:
                        self.declare(schedules)
                        next_declare = time.monotonic() + constants.SCHEDULE_DECLARE_SECONDS
                    for fired in schedules.fire_due(time.time()):
                        if fired.outcome == "unreadable" and fired.id not in self.unreadable:
                            self.unreadable.add(fired.id)  # warned once, not every second
                            log.warning(
                                "schedule %s: its stored definition is unreadable (another "
                                "version's?); left for a container that reads it",
                                fired.id,
                            )
                        elif fired.missed:
                            log.warning(
                                "schedule %s misfired: %d fire times dropped, %d jobs published",
                                fired.id,
                                fired.missed,
                                fired.published,
                            )
                except redis.RedisError as exc:
                    log.warning("schedules skipped, Redis unavailable: %s", exc)
                except Exception:  # the thread must outlive a surprise: the next tick retries
                    log.exception("schedules: tick failed")
                stop.wait(constants.SCHEDULE_TICK_SECONDS)
        finally:
            client.close()
