"""Queue names: each named queue is three RQ queues, one per priority, drained in order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

Priority = Literal["high", "default", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")
_BASE = re.compile(r"[A-Za-z0-9_.-]+")


def valid_base(name: str) -> bool:
    return bool(_BASE.fullmatch(name)) and not name.endswith((".high", ".low"))


def concrete(base: str, priority: Priority) -> str:
    """The RQ queue for a priority: `emails.high`, `emails`, `emails.low`."""
    return base if priority == "default" else f"{base}.{priority}"


def base(queue: str) -> str:
    """The named queue an RQ queue belongs to: `emails.high` -> `emails`."""
    return queue.removesuffix(".high").removesuffix(".low")


def priority(queue: str) -> Priority:
    if queue.endswith(".high"):
        return "high"
    return "low" if queue.endswith(".low") else "default"


def served(bases: Iterable[str]) -> list[str]:
    """Every RQ queue of these named queues, in the order a worker drains them."""
    names = sorted(set(bases))
    return [concrete(base, priority) for priority in PRIORITIES for base in names]
