"""Schemathesis hooks for the contract test (loaded by `st run` through SCHEMATHESIS_HOOKS, and
imported by the in-process fuzz): a valid case made to obey the rules the API enforces that no
OpenAPI document can state, each answered with a 422:

- `since` after `until` (a JSON Schema cannot compare two values);
- a `since` or `until` whose offset takes it outside years 1 to 9999 in UTC
  (`0001-01-01T01:00:00+03:04`: a valid date-time that no datetime can hold);
- a `run_at` more than a year from now (a bound that moves with the clock);
- an Idempotency-Key header that differs from the body's `idempotency_key` (a header and a
  body field: no schema spans both);
- an integer beyond 64 bits in a free-form payload (JSON Schema's integers are values: 1e30
  is one, and the API takes that float, but not the integer 10**30);
- a cron expression whose fields are out of range (`61 * * * *`: the document states the
  shape of five fields, cronsim reads the rest);
- the payload of PATCH /schedules/{job_type}/{name}, checked against the model of the job
  type the path names (the document cannot tie a body's schema to a path parameter);
- `depends_on`, whose ids must name jobs that exist, and whose `$<index>` references must
  name another item of the same batch, in no cycle (the data and the batch decide).

Everything else the server checks, the document states. And one case is left out: DELETE
/dead's query is an object exploded into the query string (so that its schema can state the
rule between `all` and the filters), where a filter that is not text (a null, a number, an
empty list) arrives as text (nothing, `5`) that no schema can tell from a valid filter.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import schemathesis
from schemathesis import Case, GenerationMode
from schemathesis.generation.meta import TestPhase

from service.api import params
from service.api.errors import Problems
from service.config import constants
from service.jobs.schedule import Schedule, ScheduleInvalid

VALID_CRON = "0 9 * * MON"


def _runnable_cron(body: dict[str, Any]) -> None:
    if isinstance(body.get("cron"), str):
        try:
            Schedule(cron=body["cron"])
        except ScheduleInvalid:
            body["cron"] = VALID_CRON


def within_int64(value: Any) -> Any:
    """`value` with every integer beyond 64 bits clamped to the nearest bound."""
    if isinstance(value, dict):
        return {key: within_int64(child) for key, child in value.items()}
    if isinstance(value, list):
        return [within_int64(child) for child in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-(2**63), min(value, 2**63 - 1))
    return value


def _moment(value: Any) -> float | None:
    return params.instant("", value, Problems()) if isinstance(value, str) else None


def obeying_unstated_rules(case: Case) -> Case:
    """The case, changed to obey the rules above (a valid case only: an invalid one stays
    invalid)."""
    if case.meta is not None and case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    label = case.operation.label
    if isinstance(case.body, dict) and case.operation.method.upper() == "POST":
        case.body = within_int64(case.body)
    body = case.body if isinstance(case.body, dict) else {}
    for where in (case.query if isinstance(case.query, dict) else {}, body):
        for name in ("since", "until"):
            if isinstance(where.get(name), str) and _moment(where[name]) is None:
                where.pop(name)
        since, until = _moment(where.get("since")), _moment(where.get("until"))
        if since is not None and until is not None and since > until:
            where["since"], where["until"] = where["until"], where["since"]
    farthest = time.time() + constants.MAX_SCHEDULE_SECONDS
    for job in body.get("jobs", []) if label == "POST /jobs/batch" else [body]:
        if isinstance(job, dict) and (_moment(job.get("run_at")) or 0) > farthest:
            job.pop("run_at")
        if isinstance(job, dict):
            job.pop("depends_on", None)
    if label in ("POST /schedules", "PATCH /schedules/{job_type}/{name}"):
        _runnable_cron(body)
    if label == "PATCH /schedules/{job_type}/{name}":
        body.pop("payload", None)
    headers = case.headers if case.headers is not None else {}
    if label == "POST /jobs" and body.get("idempotency_key") and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = body["idempotency_key"]
    return case


def _lost_as_text(value: Any) -> bool:
    """Whether `value` would arrive in a query string as other text than it is: anything but
    text (a null, a number, an empty list or object: nothing or `5`), or the text of a null,
    a boolean or a number."""
    if not isinstance(value, str):
        return True
    try:
        return not isinstance(orjson.loads(value), str | list | dict)
    except orjson.JSONDecodeError:
        return False


@schemathesis.hook
def filter_query(ctx: Any, query: Any) -> bool:
    operation = getattr(ctx, "operation", None)
    if operation is None or operation.label != "DELETE /dead" or not isinstance(query, dict):
        return True
    filters = ("type", "queue", "error", "since", "until")
    return not any(name in query and _lost_as_text(query[name]) for name in filters)


def listing_every_dead_job(case: Case) -> Case:
    """In the stateful phase, GET /dead without filters: random ones match no dead job, and
    its links (retry, delete) would have no id to follow."""
    stateful = case.meta is not None and case.meta.phase.name is TestPhase.STATEFUL
    if stateful and case.operation.label == "GET /dead":
        case.query = {}
    return case


def waiting_briefly(case: Case) -> Case:
    """GET /jobs/{job_id} with a valid `wait` waits 0.1 s at most: the jobs of these runs never
    end (no worker runs), and each case would otherwise wait up to 30 s."""
    query = case.query if isinstance(case.query, dict) else {}
    if case.operation.label == "GET /jobs/{job_id}" and "wait" in query:
        try:
            wait = float(query["wait"]) if not isinstance(query["wait"], bool) else -1.0
        except (TypeError, ValueError):
            return case  # not a number: refused at once
        if 0.1 < wait <= constants.MAX_WAIT_SECONDS:
            query["wait"] = 0.1
    return case


@schemathesis.hook
def before_call(ctx: Any, case: Case, **kwargs: Any) -> None:
    listing_every_dead_job(waiting_briefly(obeying_unstated_rules(case)))
