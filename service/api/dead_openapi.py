"""The dead-letter endpoints in the OpenAPI document: their filters, their bodies and every
answer each may give, as service/api/dead.py enforces them."""

from __future__ import annotations

from typing import Any

from service.api.dead import CURSOR_PATTERN, FILTERS, MAX_CHARS
from service.api.openapi_parts import (
    BODY_ERRORS,
    REDIS_UNAVAILABLE,
    invalid,
    job_id_param,
    or_empty,
    query_param,
    record,
    response,
)
from service.config import constants


def _object(**properties: Any) -> dict[str, Any]:
    return record(properties)


_FILTER_DOCS = {
    "type": "A job type, or a prefix ending in `*` (`email.*`)",
    "queue": "One RQ queue, priority included (`emails.high`)",
    "error": "Case-insensitive substring of the last attempt's error text (the whole traceback)",
    "since": "Failed at or after this RFC 3339 time with a timezone",
    "until": "Failed at or before this RFC 3339 time with a timezone",
}
# What `_filter` accepts (an empty value counts as not given); `since` after `until` is a 422
# that no schema can say.
_FILTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "type": {"maxLength": MAX_CHARS["type"], "pattern": r"^[^*]*[*]?$"},
    "queue": {"maxLength": MAX_CHARS["queue"], "pattern": r"^[A-Za-z0-9_.-]*$"},
    "error": {"maxLength": MAX_CHARS["error"]},
    "since": {"format": "date-time"},
    "until": {"format": "date-time"},
}
# `all` stands for every dead job: never with a filter (see `_all_rule`), as JSON Schema says
# it of an object holding the filters and `all`.
_ANY_FILTER = {
    "anyOf": [
        {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
        for name in FILTERS
    ]
}
_ALL = {"required": ["all"], "properties": {"all": {"const": True}}}
_NOT_ALL_WITH_A_FILTER = {"not": {"allOf": [_ALL, _ANY_FILTER]}}
_DEAD_JOB = {
    "type": "object",
    "required": ["id", "queue"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": ["string", "null"]},
        "queue": {"type": "string"},
        "failed_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "attempts": {"type": "integer"},
        "crashes": {"type": "integer"},
        "reason": {
            "enum": [
                "exception",
                "timeout",
                "result_not_json",
                "result_too_large",
                "worker_lost",
                None,
            ]
        },
        "error": {"type": ["string", "null"], "description": "Last line of the traceback"},
        "payload": {},
    },
}
_NEXT_CURSOR = {
    "type": ["string", "null"],
    "pattern": CURSOR_PATTERN,
    "description": "null: the end was reached",
}


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of these routes."""
    filters = {name: or_empty({"type": "string", **_FILTER_SCHEMAS[name]}) for name in _FILTER_DOCS}
    cursor_doc = "`next_cursor` of the previous answer"
    cursor = {"type": "string", "pattern": CURSOR_PATTERN}
    dead_link = {"job_id": "$response.body#/jobs/0/id"}
    not_dead = response("not_in_dead_letter_queue: no such job among the dead")
    budget = (
        f"One request examines at most {constants.DEAD_LIST_BUDGET} registry entries, newest "
        "failure first, and answers `next_cursor`: send the same request again with it as "
        "`cursor` until it is null. `count` covers the entries this request examined "
        "(`examined`). A client that hangs up stops the work between pages of "
        f"{constants.DEAD_FIELDS_PAGE} entries; what was done stays done."
    )
    progress = {
        "count": {"type": "integer", "minimum": 0},
        "examined": {
            "type": "integer",
            "minimum": 0,
            "description": "Registry entries this request examined",
        },
        "next_cursor": _NEXT_CURSOR,
    }
    # DELETE /dead's query: the filters, `all` and `cursor`, as one object so that a schema
    # can state the rule between them.
    delete_query = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **filters,
            "all": or_empty({"type": "boolean"}),
            "cursor": or_empty(cursor),
        },
        "allOf": [_NOT_ALL_WITH_A_FILTER, {"anyOf": [_ALL, _ANY_FILTER]}],
    }
    retry_body = {
        "type": "object",
        "required": ["dry_run"],
        "additionalProperties": False,
        "properties": {
            "dry_run": {"type": "boolean", "description": "Count and list, change nothing"},
            "all": {
                "type": ["boolean", "null"],
                "description": "true: every dead job (no filters); required to retry them all",
            },
            "cursor": {
                "anyOf": [cursor, {"const": ""}, {"type": "null"}],
                "description": cursor_doc,
            },
            **{
                # '' and null count as not given.
                name: {"anyOf": [*filters[name]["anyOf"], {"type": "null"}], "description": doc}
                for name, doc in _FILTER_DOCS.items()
            },
        },
        # A retry of every dead job says so with `"all": true`; a dry run needs no filter.
        "allOf": [
            _NOT_ALL_WITH_A_FILTER,
            {"anyOf": [{"properties": {"dry_run": {"const": True}}}, _ALL, _ANY_FILTER]},
        ],
    }
    invalid_parameters = invalid("invalid_parameters: an invalid parameter; nothing changed.")
    return {
        "/dead": {
            "get": {
                "operationId": "listDead",
                "summary": "Dead jobs (failed, out of retries), newest failure first",
                "description": "Ordered by failed-registry score (failure time + failure_ttl). "
                f"Follow `next_cursor` until it is null: one request examines at most "
                f"{constants.DEAD_LIST_BUDGET} entries, so a sparse filter may answer fewer "
                "jobs than `limit`, even none.",
                "parameters": [
                    *(query_param(name, _FILTER_DOCS[name], filters[name]) for name in filters),
                    query_param(
                        "limit",
                        "Most jobs returned",
                        or_empty(
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": constants.LIST_MAX_LIMIT,
                                "default": constants.LIST_DEFAULT_LIMIT,
                            }
                        ),
                    ),
                    query_param("cursor", cursor_doc, or_empty(cursor)),
                ],
                "responses": {
                    "200": {
                        **response(
                            "A page of dead jobs",
                            _object(
                                jobs={"type": "array", "items": _DEAD_JOB},
                                next_cursor=_NEXT_CURSOR,
                            ),
                        ),
                        "links": {
                            "RetryDead": {"operationId": "retryDead", "parameters": dead_link},
                            "DeleteDead": {"operationId": "deleteDead", "parameters": dead_link},
                        },
                    },
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "delete": {
                "operationId": "deleteMatchingDead",
                "summary": "Delete the matching dead jobs (a filter, or all=true, is required)",
                "description": budget,
                "parameters": [
                    {
                        "name": "query",
                        "in": "query",
                        "style": "form",
                        "explode": True,
                        "required": True,
                        "description": "The filters (" + ", ".join(FILTERS) + "), or `all=true`: "
                        "every dead job; and `cursor`: " + cursor_doc,
                        "schema": delete_query,
                    }
                ],
                "responses": {
                    "200": response("How many were deleted", _object(**progress)),
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            },
        },
        "/dead/retry": {
            "post": {
                "operationId": "retryMatchingDead",
                "summary": "Retry the matching dead jobs, or (dry_run) count them; retrying "
                'every one needs "all": true',
                "description": budget,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": retry_body}},
                },
                "responses": {
                    "200": response(
                        "How many were retried (or, in a dry run, match) among the entries "
                        "examined; a dry run also lists their ids "
                        f"(at most {constants.DEAD_DRY_RUN_IDS})",
                        {
                            **_object(dry_run={"type": "boolean"}, **progress),
                            # A dry run's answer only.
                            "properties": {
                                "dry_run": {"type": "boolean"},
                                **progress,
                                "ids": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ),
                    **BODY_ERRORS,
                    "422": invalid_parameters,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/dead/{job_id}/retry": {
            "post": {
                "operationId": "retryDead",
                "summary": "Put a dead job back on its queue at once, as new; its history is kept",
                "parameters": [job_id_param()],
                "responses": {
                    "200": response(
                        "Queued",
                        _object(
                            id={"type": "string"},
                            queue={"type": "string"},
                            status={"const": "queued"},
                        ),
                    ),
                    "404": not_dead,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/dead/{job_id}": {
            "delete": {
                "operationId": "deleteDead",
                "summary": "Delete a dead job: its record, history and dead-letter entry",
                "parameters": [job_id_param()],
                "responses": {
                    "204": {"description": "Deleted"},
                    "404": not_dead,
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
    }
