"""Every job state transition, as a Lua script: each runs atomically in one round trip.

The scripts write RQ 3's data model (see `records.py` and README "Redis data model"): job hash,
queue list, started registry holding `<id>:<execution id>`, scheduled/finished/failed/canceled
registries, and the results stream, one entry per attempt, with the reason it ended. Each lives
in a `.lua` file of this folder, called by one Python wrapper beside it (`claim.lua` by
`claim.py`, ...), which encodes its arguments and decodes its reply.

A script is composed here, once, at import:

1. its first line, Redis 7's flags (`#!lua`, or `#!lua flags=allow-oom`: see below);
2. a prelude generated from service/config/constants.py: `local PREFIX = ARGV[1]`, and for
   each key name, key function and tunable the script mentions, its Lua definition
   (`local function job_key(name) return PREFIX .. 'job:' .. name end`,
   `local DEAD_TRIM_MAX = 100`), so no key name or limit is spelled in a `.lua` file;
3. the fragments its `-- include: _a _b` line names (files starting with `_`), each once,
   after the fragments they include themselves;
4. its own text.

So every script's ARGV[1] is the key prefix (`rq:`: the runners in lua.py and connection.py
add it), and its own arguments start at ARGV[2].

Without `allow-oom`, Redis refuses the whole script, before it starts, while its used memory
is over `maxmemory`: scripts that add data whose size a client controls, or that start new
work, so Redis passes its limit by one call's writes at most. The others declare `allow-oom`,
each saying why it must run on a full Redis. (service/store/lua.py turns the flags line into a
comment for servers older than Redis 7.)
"""

from __future__ import annotations

import re
from importlib import resources

from service.config import constants

_FLAGS = ("#!lua\n", "#!lua flags=allow-oom\n")  # refused when full, runs when full
_INCLUDE = re.compile(r"^-- include: (.*)$", re.M)

# The tunables the scripts read, by their name in constants.py.
_LIMITS = (
    "HISTORY_BUFFER_MAX",
    "WAKE_TOKENS_MAX",
    "DEAD_TRIM_MAX",
    "RESULTS_KEPT",
    "RESULT_TTL",
    "FAILURE_TTL",
    "PROMOTE_BATCH",
    "PUBLISH_JOB_ARGS",
    "LIMIT_RECHECK_SECONDS",
    "LIMIT_LEASE_GRACE",
    "LIMIT_HELD_RELEASE_MAX",
    "LIMIT_KEY_TTL",
)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


def _fragments(text: str, done: list[str]) -> None:
    """The fragments `text` includes, dependencies first, each once, appended to `done`."""
    for line in _INCLUDE.findall(text):
        for name in line.split():
            if name not in done:
                _fragments(_read(name), done)
                done.append(name)


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", text) is not None


def prelude(text: str) -> str:
    """The Lua definitions of the key names, key functions and tunables `text` mentions."""
    lines = ["local PREFIX = ARGV[1]"]
    for name, part in constants.KEYS.items():
        if _mentions(text, name):
            lines.append(f"local {name} = PREFIX .. '{part}'")
    for name, part in constants.KEY_FAMILIES.items():
        if _mentions(text, name):
            head, _, tail = part.partition("{}")
            built = f"PREFIX .. '{head}' .. name" + (f" .. '{tail}'" if tail else "")
            lines.append(f"local function {name}(name) return {built} end")
    for name in _LIMITS:
        if _mentions(text, name):
            lines.append(f"local {name} = {getattr(constants, name)}")
    return "\n".join(lines) + "\n"


def compose(name: str) -> str:
    """The script `name` (its `.lua` file) as Redis runs it: see the module's docstring."""
    text = _read(name)
    flags, _, body = text.partition("\n")
    if f"{flags}\n" not in _FLAGS:
        raise ValueError(f"{name}.lua must start with one of {_FLAGS}")
    included: list[str] = []
    _fragments(body, included)
    code = "".join(_INCLUDE.sub("", _read(fragment)) for fragment in included)
    code += _INCLUDE.sub("", body)
    return f"{flags}\n{prelude(code)}{code}"


# The API's: publish, cancel, pause and resume a queue.
PUBLISH = compose("publish")
PUBLISH_EACH = compose("publish_each")
PUBLISH_ONCE = compose("publish_once")
CANCEL = compose("cancel")
PAUSE = compose("pause")

# A worker process's: claim jobs, record how they ended, keep its registration alive.
CLAIM = compose("claim")
COMPLETE = compose("complete")
HEARTBEAT = compose("heartbeat")

# Housekeeping's, run by every worker container: recover lost jobs, promote due ones, fire
# schedules.
RECOVER = compose("recover")
PROMOTE = compose("promote")
SCHEDULE_PUT = compose("schedule_put")
SCHEDULE_FIRE = compose("schedule_fire")

# The API's, on schedules: create, change, pause or resume, delete one.
SCHEDULE_CREATE = compose("schedule_create")
SCHEDULE_UPDATE = compose("schedule_update")
SCHEDULE_PAUSE = compose("schedule_pause")
SCHEDULE_DELETE = compose("schedule_delete")

# The dead-letter queue's.
DEAD_RETRY = compose("dead_retry")
DEAD_DELETE = compose("dead_delete")
