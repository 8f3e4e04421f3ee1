"""`depends_on` in a request: references to items of the same batch, cycles, publish order.

A job names each parent by its id, or, in `POST /jobs/batch`, an item of the same batch by
its index: `"$0"` is the batch's first job (its id is made only when the batch is accepted).
Items may name later items too; the batch is then published parents first, so the publishing
script finds every parent, and a cycle (an item that waits, through others or directly, for
itself) is a 422 naming the items in it. Across requests no cycle can form: a job's parents
exist before it, and its id is new.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from service.api.errors import ApiError
from service.jobs.records import NewJob

# A parent: a job id (RQ's alphabet), or `$<index>` of an item of the same batch.
REFERENCE = re.compile(r"\$(0|[1-9][0-9]{0,3})")
PARENT_PATTERN = rf"^({REFERENCE.pattern}|[A-Za-z0-9_-]{{1,128}})$"


def reference_problems(
    parents: Sequence[str], index: int, count: int, batch: bool, where: str
) -> list[dict[str, Any]]:
    """What is wrong with the `$<index>` references of item `index` of `count`."""
    found = []
    for position, parent in enumerate(parents):
        match = REFERENCE.fullmatch(parent)
        if match is None:
            continue
        field = f"{where}depends_on.{position}"
        target = int(match[1])
        if not batch:
            message = f"{parent!r} names an item of a batch: only in POST /jobs/batch"
        elif target >= count:
            message = f"{parent!r}: the batch has {count} jobs ($0 to ${count - 1})"
        elif target == index:
            message = f"{parent!r} is this job itself: a job cannot wait for itself"
        else:
            continue
        found.append({"field": field, "message": message})
    return found


def link(jobs: list[NewJob]) -> list[NewJob]:
    """The jobs with each `$<index>` replaced by that item's id, each parent once."""
    ids = [job.id for job in jobs]
    linked = []
    for job in jobs:
        if not job.depends_on:
            linked.append(job)
            continue
        parents = (_resolve(parent, ids) for parent in job.depends_on)
        linked.append(dataclasses.replace(job, depends_on=tuple(dict.fromkeys(parents))))
    return linked


def _resolve(parent: str, ids: list[str]) -> str:
    match = REFERENCE.fullmatch(parent)
    return parent if match is None else ids[int(match[1])]


def publish_order(jobs: Sequence[NewJob]) -> list[NewJob]:
    """The jobs, parents of the same batch before their dependents (else in their order);
    a 422 `dependency_cycle` naming the items of a cycle if there is one."""
    position = {job.id: index for index, job in enumerate(jobs)}
    inside = [[position[p] for p in job.depends_on if p in position] for job in jobs]
    if not any(inside):
        return list(jobs)
    order: list[int] = []
    state = [0] * len(jobs)  # 0 unseen, 1 on the path, 2 placed
    for root in range(len(jobs)):
        if state[root]:
            continue
        # Depth-first, iterative: (item, its next parent to visit).
        path: list[list[int]] = [[root, 0]]
        state[root] = 1
        while path:
            frame = path[-1]
            item, next_parent = frame
            if next_parent < len(inside[item]):
                frame[1] += 1
                parent = inside[item][next_parent]
                if state[parent] == 1:
                    cycle = [entry[0] for entry in path]
                    raise _cycle(cycle[cycle.index(parent) :])
                if state[parent] == 0:
                    state[parent] = 1
                    path.append([parent, 0])
            else:
                state[item] = 2
                order.append(item)
                path.pop()
    return [jobs[index] for index in order]


def _cycle(items: list[int]) -> ApiError:
    names = " -> ".join(f"${index}" for index in [*items, items[0]])
    return ApiError(
        422,
        "dependency_cycle",
        f"jobs wait for each other in a cycle ({names}), so none could ever run; "
        "nothing was enqueued",
        {"jobs": items},
    )
