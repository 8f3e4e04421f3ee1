"""The OpenAPI document, generated from the registry: one request schema per job type."""

from __future__ import annotations

from typing import Any

from service.api import dead, params
from service.api.errors import LISTED_ERRORS_DOC
from service.api.submit import IDEMPOTENCY_KEY, MAX_TYPE_CHARS, JobRequest
from service.config import constants
from service.jobs.registry import Registry

_ERROR = {"$ref": "#/components/schemas/Error"}
INVALID = {"$ref": "#/components/schemas/Invalid"}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or _ERROR}}
    return {"description": description, "content": content}


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


def build_openapi(
    registry: Registry,
    *,
    auth: bool,
    max_result_ttl: int = constants.MAX_RESULT_TTL,
    max_failure_ttl: int = constants.MAX_FAILURE_TTL,
) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {},
                    },
                    "required": ["code", "message"],
                }
            },
        },
        # A 422 that lists the request's errors (details.errors: each names its field).
        "Invalid": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {
                            "type": "object",
                            "properties": {
                                "errors": {
                                    "type": "array",
                                    "maxItems": constants.LISTED_ERRORS,
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "field": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                        "required": ["field", "message"],
                                    },
                                },
                                "error_count": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    "required": ["code", "message"],
                }
            },
        },
        "Accepted": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("id", "type", "queue", "status")},
        },
    }
    # The options every job takes (priority, delay, retries...), from the request model.
    options = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(options.pop("$defs", {}))
    option_properties = _bounded_options(
        {k: v for k, v in options["properties"].items() if k not in ("type", "payload")},
        {"result_ttl": max_result_ttl, "failure_ttl": max_failure_ttl},
    )
    refs = []
    for job_type in registry:
        name = "Job_" + job_type.name.replace(".", "_").replace("-", "_")
        payload = _int64(job_type.json_schema())
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
        }
        refs.append({"$ref": f"#/components/schemas/{name}"})
    schemas["NewJob"] = {"oneOf": refs, "discriminator": {"propertyName": "type"}}
    job_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewJob"}}},
    }
    errors = {
        "400": _response("Malformed JSON"),
        "413": _response("Body over MAX_BODY_BYTES"),
        "415": _response("Not application/json"),
        "422": _response(
            "Unknown job type, invalid payload, or an integer outside the signed 64-bit range "
            "anywhere in the body; nothing was enqueued. " + LISTED_ERRORS_DOC,
            INVALID,
        ),
        "429": _response("queue_full: the queue holds MAX_BACKLOG waiting jobs (see Retry-After)"),
        "503": _response(
            "queue_unavailable (Redis unreachable, stalled or loading) or redis_full (maxmemory); "
            "see Retry-After"
        ),
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}] if auth else []
    paths: dict[str, Any] = {
        "/jobs": {
            "post": {
                "summary": "Enqueue one job (queued, or scheduled with delay/run_at)",
                "requestBody": job_body,
                "security": security,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
                        "description": "Repeats with the same key and request return the "
                        "original job (200); the same key with another request is a 409.",
                    }
                ],
                "responses": {
                    "202": _response("Accepted", {"$ref": "#/components/schemas/Accepted"}),
                    "200": _response(
                        "A repeat of an idempotent request: the original job", {"type": "object"}
                    ),
                    "409": _response("Idempotency-Key already used for another request"),
                    **errors,
                },
            }
        },
        "/jobs/batch": {
            "post": {
                "summary": f"Enqueue up to {constants.MAX_BATCH_JOBS} jobs, all or nothing",
                "security": security,
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
                "responses": {"202": _response("Accepted", {"type": "object"}), **errors},
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "A job's status, result, error and attempts",
                "security": security,
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _response("The job", {"type": "object"}),
                    "404": _response("Unknown id"),
                    "410": _response("The id shows the job is older than jobs are kept"),
                },
            },
            "delete": {
                "summary": "Cancel: queued or scheduled at once (200), running on its worker (202)",
                "security": security,
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _response("Canceled", {"type": "object"}),
                    "202": _response("Canceling: its worker stops it", {"type": "object"}),
                    "404": _response("Unknown id"),
                    "409": _response("Finished, failed or canceled already"),
                },
            },
        },
        "/queues": {
            "get": {
                "summary": "Per queue: waiting, started, scheduled, finished, failed, workers",
                "security": security,
                "responses": {"200": _response("Queue counts", {"type": "object"})},
            }
        },
        "/backlog": {
            "get": {
                "summary": "The true backlog (waiting in every priority + due scheduled), for "
                "autoscaling",
                "security": security,
                "responses": {
                    "200": _response(
                        "`{backlog, waiting, due_scheduled, queues}`", {"type": "object"}
                    )
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": _response("Alive", {"type": "object"})},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness (Redis reachable)",
                "responses": {
                    "200": _response("Ready", {"type": "object"}),
                    "503": _response(
                        "Not ready: each failing component named (`unavailable`), never its error",
                        {"type": "object"},
                    ),
                },
            }
        },
    }
    paths["/jobs"]["get"] = {
        "summary": "Job history (MongoDB), newest change first; 501 without MONGODB_URI",
        "security": security,
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": params.or_empty(schema),
                "description": description,
            }
            for name, schema, description in (
                ("type", {"type": "string", "maxLength": MAX_TYPE_CHARS}, "a job type"),
                (
                    "status",
                    {"enum": ["queued", "scheduled", "started", "finished", "failed", "canceled"]},
                    "the job's latest status",
                ),
                ("since", {"type": "string", "format": "date-time"}, "last change at or after"),
                ("until", {"type": "string", "format": "date-time"}, "last change at or before"),
                (
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": constants.LIST_MAX_LIMIT},
                    f"default {constants.LIST_DEFAULT_LIMIT}",
                ),
                ("cursor", {"type": "string"}, "next_cursor of the previous page"),
            )
        ],
        "responses": {
            "200": _response("`{jobs, next_cursor}`", {"type": "object"}),
            "422": _response("A bad parameter. " + LISTED_ERRORS_DOC, INVALID),
            "501": _response("History is off: MONGODB_URI is not set"),
            "503": _response("MongoDB unavailable"),
        },
    }
    paths.update(dead.openapi_paths(auth=auth))
    for operations in paths.values():  # every operation that takes a key can answer 401
        for operation in operations.values():
            if operation.get("security"):
                operation["responses"]["401"] = _response("Missing or invalid API key")
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Job service", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document
