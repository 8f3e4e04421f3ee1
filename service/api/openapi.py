"""The OpenAPI document, generated from the registry: one request schema per job type."""

from __future__ import annotations

from typing import Any

from service.api import dead_openapi, job_history, limiting, pausing, schedule_openapi
from service.api.middleware import PROTECTED
from service.api.openapi_parts import (
    BODY_ERRORS,
    FORBIDDEN,
    REDIS_UNAVAILABLE,
    SCHEMAS,
    UNAUTHORIZED,
    invalid,
    job_id_param,
    record,
    response,
)
from service.api.submit import IDEMPOTENCY_KEY, JobRequest
from service.config import constants
from service.jobs.registry import Registry


def _int64(schema: Any) -> Any:
    """The schema with every unbounded integer bounded to 64 bits: a larger one reaches the
    service as an inexact float (orjson's limit), which it refuses rather than round."""
    if isinstance(schema, list):
        return [_int64(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: _int64(value) for key, value in schema.items()}
    if schema.get("type") == "integer":
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            bounded["minimum"] = -(2**63)
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            bounded["maximum"] = 2**63 - 1
    return bounded


def _bounded_options(properties: dict[str, Any], ceilings: dict[str, int]) -> dict[str, Any]:
    """The options' schemas with the limits the request model leaves to the settings: each
    TTL's `maximum` is its ceiling (MAX_RESULT_TTL, MAX_FAILURE_TTL), and run_at says how far
    ahead it may be."""
    bounded = dict(properties)
    for field, ceiling in ceilings.items():
        schema = bounded[field]
        integer = {**schema["anyOf"][0], "maximum": ceiling}
        bounded[field] = {**schema, "anyOf": [integer, *schema["anyOf"][1:]]}
    bounded["run_at"] = {
        **bounded["run_at"],
        "description": "RFC 3339 time with a timezone, at most a year (365 days) ahead; "
        "not with delay",
    }
    return bounded


# A job gives `delay` or `run_at`, never both (null counts as not given).
_ONE_SCHEDULE = {
    "not": {
        "required": ["delay", "run_at"],
        "properties": {"delay": {"type": "number"}, "run_at": {"type": "string"}},
    }
}
_JOB_VIEW = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
}
_CANCELED = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"enum": ["canceled", "canceling"]}},
}
_ACCEPTED = record(
    {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "queue": {"type": "string"},
        "status": {"enum": ["queued", "scheduled", "deferred"]},
        "run_at": {"type": "string", "format": "date-time"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
    },
    required=["id", "type", "queue", "status"],
)


_WAIT_PARAM = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Seconds to wait for the job to end before answering (0 answers at once).",
    "schema": {"type": "number", "minimum": 0, "maximum": constants.MAX_WAIT_SECONDS},
}


def _job_links() -> dict[str, Any]:
    """The operations that take the id of a job just accepted."""
    job_id = {"job_id": "$response.body#/id"}
    return {
        "GetJob": {"operationId": "getJob", "parameters": job_id},
        "CancelJob": {"operationId": "cancelJob", "parameters": job_id},
    }


def _job_operations() -> dict[str, Any]:
    """GET /jobs/{job_id}, and cancelling it (POST .../cancel; DELETE, the older spelling)."""
    cancel_doc = (
        "A queued, scheduled or deferred job is canceled at once (200), and so are the jobs "
        "waiting for it unless they allow_failure; a running one's worker is asked "
        "to stop it (202) and it ends `canceled`. A canceled job is not deleted: GET "
        "/jobs/{job_id} answers it, status `canceled`, until its failure_ttl has passed, as "
        "RQ's `Job.cancel` and Celery's revoke keep theirs."
    )
    cancel_responses = {
        "200": response("Canceled", _CANCELED),
        "202": response("Canceling: its worker stops it", _CANCELED),
        "404": response("job_not_found: no such job"),
        "409": response("job_not_cancelable: finished, failed or canceled already"),
        "410": response("job_expired: the id shows the job is older than jobs are kept"),
        "503": REDIS_UNAVAILABLE,
    }
    return {
        "/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's status, result, error and attempts",
                "description": "With `wait`, a long-poll: the answer comes as soon as the job "
                "is finished, failed (dead-lettered) or canceled, or once `wait` seconds have "
                "passed, with the job as it is then (still 200).",
                "parameters": [job_id_param(), _WAIT_PARAM],
                "responses": {
                    "200": response("The job", _JOB_VIEW),
                    "422": invalid("invalid_parameters: `wait` is not a number 0-30;"),
                    "404": response("job_not_found: no such job"),
                    "410": response(
                        "job_expired: the id shows the job is older than jobs are kept"
                    ),
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "delete": {
                "operationId": "cancelJobByDelete",
                "summary": "Cancel a job, as POST /jobs/{job_id}/cancel does; nothing is deleted",
                "description": cancel_doc,
                "deprecated": True,
                "parameters": [job_id_param()],
                "responses": cancel_responses,
            },
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job: queued or scheduled at once (200), running on its "
                "worker (202)",
                "description": cancel_doc,
                "parameters": [job_id_param()],
                "responses": cancel_responses,
            }
        },
    }


def build_openapi(
    registry: Registry,
    *,
    auth: bool,
    history_on: bool = True,
    max_result_ttl: int = constants.MAX_RESULT_TTL,
    max_failure_ttl: int = constants.MAX_FAILURE_TTL,
) -> dict[str, Any]:
    """The document of this API as configured: `auth` (API_KEYS set: a key on every path
    that needs one), `history_on` (MONGODB_URI set: GET /jobs), the TTL ceilings."""
    schemas: dict[str, Any] = {**SCHEMAS, "Accepted": _ACCEPTED}
    # The options every job takes (priority, delay, retries...), from the request model.
    options = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(options.pop("$defs", {}))
    option_properties = _bounded_options(
        {k: v for k, v in options["properties"].items() if k not in ("type", "payload")},
        {"result_ttl": max_result_ttl, "failure_ttl": max_failure_ttl},
    )
    refs = []
    payloads: dict[str, Any] = {}
    for job_type in registry:
        name = "Job_" + job_type.name.replace(".", "_").replace("-", "_")
        payload = _int64(job_type.json_schema())
        payloads[job_type.name] = payload
        schemas[name] = {
            "type": "object",
            "description": (job_type.handler.__doc__ or "").strip(),
            "properties": {
                "type": {"const": job_type.name},
                "payload": payload,
                **option_properties,
            },
            # The payload defaults to {}: required when {} would not do.
            "required": ["type", "payload"] if payload.get("required") else ["type"],
            "additionalProperties": False,
            **_ONE_SCHEDULE,
        }
        refs.append({"$ref": f"#/components/schemas/{name}"})
    schemas["NewJob"] = {"oneOf": refs, "discriminator": {"propertyName": "type"}}
    job_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewJob"}}},
    }
    errors = {
        **BODY_ERRORS,
        "422": invalid(
            "invalid_job: an unknown job type, an invalid payload or option, or an integer "
            "outside the signed 64-bit range anywhere in the body; unknown_dependency: "
            "depends_on names jobs Redis does not hold (details.ids); dependency_cycle: items "
            "of a batch wait for each other (details.jobs); nothing was enqueued."
        ),
        "429": response("queue_full: the queue holds MAX_BACKLOG waiting jobs (see Retry-After)"),
        "503": response(
            "queue_unavailable (Redis unreachable, stalled or loading), redis_full (maxmemory) "
            "or redis_not_durable (DURABILITY=strict): nothing was enqueued; or not_replicated "
            "(DURABILITY=replicated): enqueued on the primary but not confirmed by enough "
            "replicas, retry with the same Idempotency-Key; see Retry-After"
        ),
    }
    paths: dict[str, Any] = {
        "/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Enqueue one job (queued, or scheduled with delay/run_at)",
                "requestBody": job_body,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
                        "description": "Repeats with the same key and request return the "
                        "original job (200); the same key with another request is a 409. "
                        "When the body gives `idempotency_key` too, the two must be equal.",
                    }
                ],
                "responses": {
                    "202": {
                        **response("Accepted", {"$ref": "#/components/schemas/Accepted"}),
                        "links": _job_links(),
                    },
                    "200": {
                        **response("A repeat of an idempotent request: the job now", _JOB_VIEW),
                        "links": _job_links(),
                    },
                    "409": response("idempotency_conflict: the key was used for another request"),
                    **errors,
                },
            }
        },
        "/jobs/batch": {
            "post": {
                "operationId": "submitBatch",
                "summary": f"Enqueue up to {constants.MAX_BATCH_JOBS} jobs, all or nothing",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["jobs"],
                                "additionalProperties": False,
                                "properties": {
                                    "jobs": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/NewJob"},
                                        "minItems": 1,
                                        "maxItems": constants.MAX_BATCH_JOBS,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": response(
                        "Accepted",
                        {
                            "type": "object",
                            "required": ["jobs"],
                            "properties": {
                                "jobs": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Accepted"},
                                }
                            },
                        },
                    ),
                    **errors,
                },
            }
        },
        **_job_operations(),
        "/queues": {
            "get": {
                "operationId": "listQueues",
                "summary": "Per queue: waiting, started, scheduled, finished, failed, workers, "
                "paused",
                "responses": {
                    "200": response("Queue counts", {"type": "object"}),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/backlog": {
            "get": {
                "operationId": "backlog",
                "summary": "The true backlog (waiting in every priority + due scheduled), for "
                "autoscaling",
                "responses": {
                    "200": response(
                        "`{backlog, waiting, due_scheduled, queues}`", {"type": "object"}
                    ),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness",
                "responses": {"200": response("Alive", {"type": "object"})},
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness (Redis reachable, MongoDB too with MONGODB_URI)",
                "responses": {
                    "200": response("Ready", {"type": "object"}),
                    "503": response(
                        "Not ready: each failing component named (`unavailable`), never its "
                        "error; see Retry-After",
                        {"type": "object"},
                    ),
                },
            }
        },
    }
    if history_on:
        paths["/jobs"]["get"] = job_history.openapi_operation()
    paths.update(pausing.openapi_paths())
    paths.update(dead_openapi.openapi_paths())
    paths.update(schedule_openapi.paths())
    schemas.update(schedule_openapi.schemas(payloads))
    paths.update(limiting.openapi_paths())
    schemas.update(limiting.SCHEMAS)
    for path, operations in paths.items():
        needs_key = auth and path.startswith(PROTECTED)
        for method, operation in operations.items():
            operation["security"] = [{"bearer": []}] if needs_key else []
            if needs_key:
                operation["responses"]["401"] = UNAUTHORIZED
                if method not in ("get", "head", "options"):
                    operation["responses"]["403"] = FORBIDDEN
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Job service", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document
