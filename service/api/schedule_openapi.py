"""The OpenAPI `paths` and schemas of /schedules (service/api/scheduling.py): one creation schema
per job type, its payload the type's."""

from __future__ import annotations

from typing import Any

from service.api.openapi_parts import (
    BODY_ERRORS,
    REDIS_UNAVAILABLE,
    invalid,
    or_empty,
    query_param,
    record,
    response,
)
from service.api.scheduling import (
    CRON_PATTERN,
    CURSOR_PATTERN,
    PREVIEW_COUNT,
    SCHEDULE_NAME_PATTERN,
    TIMEZONES,
    TYPE_PATTERN,
)
from service.config import constants
from service.jobs.schedule import MISFIRE_POLICIES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TIMING: dict[str, Any] = {
    "cron": {
        "type": "string",
        "pattern": CRON_PATTERN,
        "description": "Five fields (minute hour day-of-month month day-of-week), read in "
        "`timezone`; a daylight-saving gap fires at the next valid instant, a repeated hour "
        "once. Not with `every`. The fields' ranges and names are checked as Debian's cron "
        "reads them (422).",
    },
    "every": {
        "type": "integer",
        "minimum": 1,
        "maximum": constants.SCHEDULE_EVERY_MAX,
        "description": "Fire every N seconds, counted from the Unix epoch. Not with `cron`.",
    },
    "timezone": {"type": "string", "enum": sorted(TIMEZONES), "default": "UTC"},
    "misfire": {
        "enum": list(MISFIRE_POLICIES),
        "default": "fire_once",
        "description": "What a fire time missed by over SCHEDULE_MISFIRE_SECONDS publishes "
        "(every worker down, or the schedule paused): one job (fire_once), none (skip), or "
        "the recent ones (catch_up).",
    },
    "catch_up_max": {
        "type": "integer",
        "minimum": 1,
        "maximum": constants.SCHEDULE_CATCH_UP_MAX,
        "default": 10,
    },
    "grace": {
        "type": "integer",
        "minimum": 0,
        "maximum": constants.SCHEDULE_GRACE_MAX,
        "default": 3600,
    },
}
_TYPE = {"type": "string", "pattern": TYPE_PATTERN}
_NAME = {"type": "string", "pattern": SCHEDULE_NAME_PATTERN}
_MOMENT = {"type": ["string", "null"], "format": "date-time"}
_VIEW: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "`<type>/<name>`"},
        "type": _TYPE,
        "name": _NAME,
        "origin": {
            "enum": ["api", "code"],
            "description": "api: created here; code: declared with @job(schedule=...), "
            "which can be paused and resumed here but not changed or deleted",
        },
        "cron": {"type": ["string", "null"]},
        "every": {"type": ["integer", "null"], "minimum": 1},
        "timezone": {"type": "string"},
        "misfire": {"enum": list(MISFIRE_POLICIES)},
        "catch_up_max": {"type": "integer"},
        "grace": {"type": "integer"},
        "payload": {"type": "object"},
        "paused": {"type": "boolean"},
        "next_fire": {**_MOMENT, "description": "null while paused; in the schedule's zone"},
        "last_fire": {**_MOMENT, "description": "the latest fire time that published a job"},
        "fired": {"type": "integer", "minimum": 0, "description": "jobs published"},
        "missed": {"type": "integer", "minimum": 0, "description": "fires a policy dropped"},
    },
}
_VIEW["required"] = list(_VIEW["properties"])
_PREVIEW = record(
    {
        "id": {"type": "string"},
        "timezone": {"type": "string"},
        "paused": {"type": "boolean"},
        "fire_times": {
            "type": "array",
            "maxItems": PREVIEW_COUNT,
            "items": {"type": "string", "format": "date-time"},
        },
    },
)
# A schedule is timed by cron or by every: exactly one.
_ONE_TIMING = {"oneOf": [{"required": ["cron"]}, {"required": ["every"]}]}


def schemas(payloads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The components: a creation body per job type (`payloads`: each type's payload schema),
    NewSchedule (one of them), the change body, a schedule and a preview."""
    found: dict[str, Any] = {}
    refs = []
    for job_type, payload in payloads.items():
        name = "Schedule_" + job_type.replace(".", "_").replace("-", "_")
        found[name] = {
            "type": "object",
            "properties": {
                "type": {"const": job_type},
                "name": {
                    **_NAME,
                    "description": "Unique within the job type; left out, a digest of the "
                    "schedule (the same request makes the same id)",
                },
                **_TIMING,
                "payload": payload,
            },
            "required": ["type", "payload"] if payload.get("required") else ["type"],
            "additionalProperties": False,
            **_ONE_TIMING,
        }
        refs.append(_ref(name))
    found["NewSchedule"] = {"oneOf": refs, "discriminator": {"propertyName": "type"}}
    found["ScheduleChange"] = {
        "type": "object",
        "description": "The fields to change; `cron` replaces `every`, `every` replaces "
        "`cron`. The next fire time starts again from the changed schedule.",
        "properties": {
            **_TIMING,
            "payload": {
                "type": "object",
                "description": "Checked against the job type's payload model (422)",
            },
        },
        "additionalProperties": False,
        "not": {"required": ["cron", "every"]},
    }
    found["Schedule"] = _VIEW
    found["SchedulePreview"] = _PREVIEW
    return found


def _links() -> dict[str, Any]:
    """The operations that take the schedule a response shows."""
    ids = {"job_type": "$response.body#/type", "name": "$response.body#/name"}
    return {
        link: {"operationId": operation, "parameters": ids}
        for link, operation in (
            ("GetSchedule", "getSchedule"),
            ("ChangeSchedule", "changeSchedule"),
            ("DeleteSchedule", "deleteSchedule"),
            ("PauseSchedule", "pauseSchedule"),
            ("ResumeSchedule", "resumeSchedule"),
            ("PreviewSchedule", "previewSchedule"),
        )
    }


def paths() -> dict[str, Any]:
    """The OpenAPI `paths` entries of /schedules."""
    path_params = [
        {"name": "job_type", "in": "path", "required": True, "schema": _TYPE},
        {"name": "name", "in": "path", "required": True, "schema": _NAME},
    ]
    shown = {**response("The schedule", _ref("Schedule")), "links": _links()}
    missing = response("schedule_not_found: no such schedule")
    unreadable = "schedule_unreadable: stored by another version of this service"
    in_code = response(
        "schedule_in_code: declared in code, which would put it back (pause it instead); "
        f"or {unreadable}"
    )
    invalid_schedule = invalid(
        "invalid_schedule: an unknown job type, a bad expression, time zone, interval, "
        "policy or name, or a payload the job type's model refuses; nothing was changed."
    )
    one = {"parameters": path_params}
    return {
        "/schedules": {
            "get": {
                "operationId": "listSchedules",
                "summary": "The schedules (of the code and of the API), the soonest due "
                "first, the paused last, a page at a time",
                "description": "Follow `next_cursor` until it is null. A schedule that fires "
                "between two pages moves on in the order, so it may show twice; one stored "
                "by another version of this service is left out (a page may hold fewer "
                "than `limit`).",
                "parameters": [
                    query_param(
                        "limit",
                        "Most schedules returned",
                        or_empty(
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": constants.LIST_MAX_LIMIT,
                                "default": constants.LIST_DEFAULT_LIMIT,
                            }
                        ),
                    ),
                    query_param(
                        "cursor",
                        "`next_cursor` of the previous answer",
                        or_empty({"type": "string", "pattern": CURSOR_PATTERN}),
                    ),
                ],
                "responses": {
                    "200": response(
                        "A page of schedules",
                        {
                            "type": "object",
                            "required": ["schedules", "next_cursor"],
                            "additionalProperties": False,
                            "properties": {
                                "schedules": {"type": "array", "items": _ref("Schedule")},
                                "next_cursor": {
                                    "type": ["string", "null"],
                                    "pattern": CURSOR_PATTERN,
                                    "description": "null: the end was reached",
                                },
                            },
                        },
                    ),
                    "422": invalid("invalid_parameters: an invalid parameter."),
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "post": {
                "operationId": "createSchedule",
                "summary": "Create a schedule: a job type run on a cron expression or every N "
                "seconds",
                "description": "Stored with origin `api`: the worker containers' clean-up of "
                "schedules their code no longer declares keeps it.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewSchedule")}},
                },
                "responses": {
                    "201": {**response("Created", _ref("Schedule")), "links": _links()},
                    "409": response("schedule_exists: its id is taken; give another name"),
                    "422": invalid_schedule,
                    **BODY_ERRORS,
                    "503": REDIS_UNAVAILABLE,
                },
            },
        },
        "/schedules/{job_type}/{name}": {
            "get": {
                **one,
                "operationId": "getSchedule",
                "summary": "A schedule: its timing, next and last fire, counts, paused",
                "responses": {
                    "200": shown,
                    "404": missing,
                    "409": response(unreadable),
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "patch": {
                **one,
                "operationId": "changeSchedule",
                "summary": "Change a schedule's timing, payload or misfire policy (API "
                "schedules only)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ScheduleChange")}},
                },
                "responses": {
                    "200": shown,
                    "404": missing,
                    "409": in_code,
                    "422": invalid_schedule,
                    **BODY_ERRORS,
                    "503": REDIS_UNAVAILABLE,
                },
            },
            "delete": {
                **one,
                "operationId": "deleteSchedule",
                "summary": "Delete a schedule (API schedules only); jobs it published stay",
                "responses": {
                    "204": {"description": "Deleted"},
                    "404": missing,
                    "409": response(
                        "schedule_in_code: declared in code, which would put it "
                        "back (pause it instead)"
                    ),
                    "503": REDIS_UNAVAILABLE,
                },
            },
        },
        "/schedules/{job_type}/{name}/pause": {
            "post": {
                **one,
                "operationId": "pauseSchedule",
                "summary": "Pause a schedule (of the API or the code): it fires nothing",
                "description": "Pausing a paused schedule changes nothing. The pause is kept "
                "in Redis and outlives the code's re-declaration of its schedules.",
                "responses": {
                    "200": shown,
                    "404": missing,
                    "409": response(unreadable),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/schedules/{job_type}/{name}/resume": {
            "post": {
                **one,
                "operationId": "resumeSchedule",
                "summary": "Resume a paused schedule; its misfire policy decides about the "
                "fire times it missed",
                "responses": {
                    "200": shown,
                    "404": missing,
                    "409": response(unreadable),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
        "/schedules/{job_type}/{name}/preview": {
            "get": {
                **one,
                "operationId": "previewSchedule",
                "summary": f"A schedule's next {PREVIEW_COUNT} fire times from now, in its "
                "time zone",
                "responses": {
                    "200": response("Its next fire times", _ref("SchedulePreview")),
                    "404": missing,
                    "409": response(unreadable),
                    "503": REDIS_UNAVAILABLE,
                },
            }
        },
    }
