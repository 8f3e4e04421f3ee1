"""The pieces of the OpenAPI document that every module describing routes shares: the error
bodies, a response, a query parameter, the path's job id, and the answers most operations
may give (401, the body's errors, 503)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.api.errors import LISTED_ERRORS_DOC
from service.config import constants

ERROR = {"$ref": "#/components/schemas/Error"}
INVALID = {"$ref": "#/components/schemas/Invalid"}
# RQ's rule for ids, as jobs.valid_id applies it: any other id cannot exist.
JOB_ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"

_ERROR_FIELDS = {
    "code": {"type": "string"},
    "message": {"type": "string"},
}
SCHEMAS: dict[str, Any] = {
    # Every error the API answers: `{"error": {"code", "message", "details"}}`.
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "properties": {**_ERROR_FIELDS, "details": {}},
                "required": ["code", "message"],
            }
        },
    },
    # A 422 that lists the request's errors (details.errors: each names its field).
    "Invalid": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    **_ERROR_FIELDS,
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
}


def response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON response; an error body unless `schema` says otherwise."""
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or ERROR}},
    }


def or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an empty value (`?since=`) counts as not given."""
    return {"anyOf": [schema, {"const": ""}]}


def query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def job_id_param() -> dict[str, Any]:
    schema = {"type": "string", "pattern": JOB_ID_PATTERN}
    return {"name": "job_id", "in": "path", "required": True, "schema": schema}


def invalid(what: str) -> dict[str, Any]:
    """The 422 that lists each invalid field."""
    return response(f"{what} {LISTED_ERRORS_DOC}", INVALID)


# The answers of an operation that reads a JSON body, besides its 422.
BODY_ERRORS = {
    "400": response("malformed_json: not JSON, or nested deeper than MAX_JSON_DEPTH"),
    "408": response("request_timeout: the body did not arrive within REQUEST_BODY_TIMEOUT"),
    "413": response("body_too_large: the body is over MAX_BODY_BYTES"),
    "415": response("unsupported_media_type: the body is not application/json"),
}
UNAUTHORIZED = response("unauthorized: a missing or invalid API key")
FORBIDDEN = response(
    "read_only_key: a key of API_READONLY_KEYS, which reads but changes nothing; "
    "csrf_failed: a change made with the console's session cookie without its CSRF token "
    "or from another origin"
)
REDIS_UNAVAILABLE = response(
    "queue_unavailable (Redis unreachable, stalled or loading) or redis_full (maxmemory); "
    "nothing was changed; see Retry-After"
)


def record(properties: dict[str, Any], required: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON object's schema: these properties, all of them required unless `required` names
    which."""
    names = list(properties) if required is None else list(required)
    return {"type": "object", "required": names, "properties": properties}
