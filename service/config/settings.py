"""One immutable, typed settings object, read from the environment once at start-up.

Every invalid variable is reported in one `ConfigError`, each naming the variable and its
value (secrets masked). `load()` takes any mapping, so tests pass a dict.

environs (with marshmallow and python-dotenv) is imported only by `load()`: worker
processes receive the settings already parsed and never need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from service.config import constants, cpus, queues
from service.config.redis_target import RedisTarget as RedisTarget
from service.config.redis_target import read_target
from service.config.secret import Secret as Secret

if TYPE_CHECKING:
    import environs

Durability = Literal["relaxed", "strict", "replicated"]
AppEnv = Literal["development", "production"]
LogFormat = Literal["json", "text"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """Raised with every problem found in the environment, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Retention:
    """The operator's ceilings on how long, and how many, ended jobs are kept. The scripts that
    end a job apply them (see scripts._TRANSITIONS), whoever wrote the job."""

    max_result_ttl: int = constants.MAX_RESULT_TTL  # seconds
    max_failure_ttl: int = constants.MAX_FAILURE_TTL  # seconds
    dead_max_jobs: int = constants.DEAD_MAX_JOBS  # per RQ queue

    def args(self) -> list[int]:
        """As the scripts take them, in this order."""
        return [self.max_result_ttl, self.max_failure_ttl, self.dead_max_jobs]


DEFAULT_RETENTION = Retention()


@dataclass(frozen=True, slots=True)
class Settings:
    worker_mode: bool = False
    worker_concurrency: int = 5  # jobs in flight in one worker process
    worker_processes: int = 1  # worker processes per container (load: the CPUs it may use)
    worker_batch_size: int = 50
    worker_processing_interval: float = 5.0  # seconds (the variable is in milliseconds)
    queue_name: str = "app-queue"
    redis: RedisTarget = RedisTarget("127.0.0.1", 6379, 0)  # noqa: RUF009 - frozen
    queue_redis: RedisTarget = RedisTarget("127.0.0.1", 6379, 1)  # noqa: RUF009 - frozen
    mongodb_uri: Secret | None = None
    app_env: AppEnv = "development"
    host: str = "0.0.0.0"  # noqa: S104 - a container must listen on all interfaces
    port: int = constants.API_PORT
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    api_keys: tuple[Secret, ...] = ()
    # Keys that read everything (GET API, console) and change nothing: 403 `read_only_key`.
    api_readonly_keys: tuple[Secret, ...] = ()
    # Signs the console's session cookies; None: derived from the keys (see api/console_session.py).
    console_secret: Secret | None = None
    openapi_public: bool = False  # /openapi.json without a key even when API_KEYS is set
    max_connections: int = constants.API_MAX_CONNECTIONS  # the worker's: WORKER_MAX_CONNECTIONS
    shutdown_timeout: float = 25.0
    max_body_bytes: int = 1024 * 1024
    max_result_bytes: int = constants.MAX_RESULT_BYTES  # largest result (its JSON) a job may return
    request_header_timeout: float = 10.0  # seconds for a request line and headers to arrive
    request_body_timeout: float = 30.0  # seconds for a request body to arrive, once begun
    handler_modules: tuple[str, ...] = field(default=())
    worker_queues: tuple[str, ...] = ()  # empty: QUEUE_NAME and every queue a job type names
    max_crashes: int = 3
    idempotency_ttl: int = 24 * 3600
    max_backlog: int = 0  # most waiting jobs per queue (all priorities) before 429; 0 = no limit
    history_ttl_days: int = 30  # job history kept in MongoDB (a TTL index)
    durability: Durability = "relaxed"  # strict: refuse a Redis that can lose accepted jobs
    min_replicas: int = 1  # DURABILITY=replicated: replicas that confirm a write before a reply
    replica_timeout: float = 1.0  # seconds WAIT gives them (REDIS_REPLICA_TIMEOUT in ms)
    max_result_ttl: int = constants.MAX_RESULT_TTL  # seconds: the longest a job's result_ttl
    max_failure_ttl: int = constants.MAX_FAILURE_TTL  # seconds: the longest a job's failure_ttl
    dead_max_jobs: int = constants.DEAD_MAX_JOBS  # most dead jobs kept per RQ queue

    @property
    def replicas(self) -> tuple[int, int] | None:
        """DURABILITY=replicated: WAIT's arguments (replicas, timeout in ms); else None."""
        if self.durability != "replicated":
            return None
        return (self.min_replicas, round(self.replica_timeout * 1000))

    @property
    def retention(self) -> Retention:
        return Retention(self.max_result_ttl, self.max_failure_ttl, self.dead_max_jobs)


# Every variable left out takes the default stated once, on the field of Settings.
_DEFAULTS = Settings()


def _mapping_env(environ: Mapping[str, str]) -> environs.Env:
    """An environs Env that reads `environ`: environs itself reads os.environ directly."""
    import environs

    class MappingEnv(environs.Env):
        def _get_value(self, env_key: str, default: Any) -> Any:
            return environ.get(env_key, default)

    return MappingEnv(eager=False)


# The numeric settings read alike: variable -> (its Settings field, type, lowest, highest).
_NUMBERS: dict[str, tuple[str, type, float, float | None]] = {
    "WORKER_CONCURRENCY": ("worker_concurrency", int, 1, 1000),
    "WORKER_BATCH_SIZE": ("worker_batch_size", int, 1, 1000),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", float, 0, 3600),
    "MAX_BODY_BYTES": ("max_body_bytes", int, 1024, None),
    "MAX_RESULT_BYTES": ("max_result_bytes", int, 1024, 64 * 1024 * 1024),
    "REQUEST_HEADER_TIMEOUT": ("request_header_timeout", float, 0.1, 300),
    "REQUEST_BODY_TIMEOUT": ("request_body_timeout", float, 0.1, 3600),
    "MAX_CRASHES": ("max_crashes", int, 1, 100),
    "MAX_BACKLOG": ("max_backlog", int, 0, 10**9),
    "HISTORY_TTL_DAYS": ("history_ttl_days", int, 1, 3650),
    "IDEMPOTENCY_TTL": ("idempotency_ttl", int, 60, 30 * 24 * 3600),
    "MAX_RESULT_TTL": ("max_result_ttl", int, 1, constants.LONGEST_TTL),
    "MAX_FAILURE_TTL": ("max_failure_ttl", int, 1, constants.LONGEST_TTL),
    "DEAD_MAX_JOBS": ("dead_max_jobs", int, 1, 10**7),
}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError listing all problems at once."""
    import environs
    from marshmallow import validate

    environ = os.environ if environ is None else environ
    env = _mapping_env(environ)
    problems: list[str] = []

    worker_mode = env.bool("WORKER_MODE", False)
    numbers: dict[str, Any] = {
        field: (env.int if cast is int else env.float)(
            variable, getattr(_DEFAULTS, field), validate=validate.Range(min=lowest, max=highest)
        )
        for variable, (field, cast, lowest, highest) in _NUMBERS.items()
    }
    processes = None  # left out or empty: the CPUs this container may use
    if environ.get("WORKER_PROCESSES"):
        processes = env.int("WORKER_PROCESSES", None, validate=validate.Range(min=1, max=64))
    interval_ms = env.int(
        "WORKER_PROCESSING_INTERVAL",
        int(_DEFAULTS.worker_processing_interval * 1000),
        validate=validate.Range(min=1000, max=60000),
    )
    queue_name = env.str("QUEUE_NAME", _DEFAULTS.queue_name, validate=_queue_name)
    app_env = env.str(
        "APP_ENV", _DEFAULTS.app_env, validate=validate.OneOf(["development", "production"])
    )
    host = env.str("HOST", _DEFAULTS.host)
    port = env.int("PORT", None, validate=validate.Range(min=1, max=65535))
    max_connections = env.int(
        "MAX_CONNECTIONS", None, validate=validate.Range(min=1, max=1_000_000)
    )
    openapi_public = env.bool("OPENAPI_PUBLIC", _DEFAULTS.openapi_public)
    log_level = env.str("LOG_LEVEL", _DEFAULTS.log_level, validate=validate.OneOf(LOG_LEVELS))
    log_format = env.str("LOG_FORMAT", None, validate=validate.OneOf(["json", "text"]))
    handler_modules: list[str] | None = env.list("HANDLER_MODULES", [], subcast=str.strip)
    worker_queues: list[str] | None = env.list(
        "WORKER_QUEUES", [], subcast=str.strip, validate=_queue_names
    )
    durability = env.str(
        "DURABILITY",
        _DEFAULTS.durability,
        validate=validate.OneOf(["relaxed", "strict", "replicated"]),
    )
    min_replicas = env.int(
        "REDIS_MIN_REPLICAS", _DEFAULTS.min_replicas, validate=validate.Range(min=1, max=100)
    )
    replica_timeout_ms = env.int(
        "REDIS_REPLICA_TIMEOUT",
        int(_DEFAULTS.replica_timeout * 1000),
        validate=validate.Range(min=1, max=60000),
    )
    try:
        env.seal()
    except environs.EnvValidationError as exc:
        errors = exc.error_messages
        for variable, messages in errors.items() if isinstance(errors, dict) else []:
            value = environ.get(str(variable), "")
            problems.append(f"{variable}={value!r}: {' '.join(map(str, messages))}")

    redis = read_target(environ, "REDIS_", RedisTarget("127.0.0.1", 6379, 0), 0, problems)
    queue_redis = None
    if redis is not None:
        queue_redis = read_target(environ, "QUEUE_REDIS_", redis, 1, problems)

    api_keys = _keys(environ.get("API_KEYS", ""))
    if app_env == "production" and not api_keys and not worker_mode:
        problems.append("API_KEYS='': production (APP_ENV=production) needs at least one API key")
    shortest = constants.MIN_API_KEY_CHARS
    short = [n for n, key in enumerate(api_keys, 1) if len(key.reveal()) < shortest]
    if app_env == "production" and short:
        problems.append(
            f"API_KEYS='*****': production (APP_ENV=production) needs keys of at least "
            f"{shortest} characters (number {', '.join(map(str, short))} of {len(api_keys)} "
            "is shorter); make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    readonly_keys = _keys(environ.get("API_READONLY_KEYS", ""))
    clash = {k.reveal() for k in readonly_keys} & {k.reveal() for k in api_keys}
    if clash:
        problems.append(
            "API_READONLY_KEYS='*****': a key is listed in both API_KEYS and API_READONLY_KEYS; "
            "give each key one role"
        )
    if app_env == "production" and any(len(k.reveal()) < shortest for k in readonly_keys):
        problems.append(
            f"API_READONLY_KEYS='*****': production (APP_ENV=production) needs keys of at least "
            f"{shortest} characters"
        )
    console_secret = environ.get("CONSOLE_SECRET", "").strip() or None
    if console_secret is not None and len(console_secret) < constants.MIN_API_KEY_CHARS:
        problems.append(
            f"CONSOLE_SECRET='*****': at least {constants.MIN_API_KEY_CHARS} characters; make "
            "one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    mongodb_uri = environ.get("MONGODB_URI") or None
    if mongodb_uri is not None and not _mongodb_uri_ok(mongodb_uri):
        problems.append(
            "MONGODB_URI='*****': expected mongodb://[user:password@]host[:port]/database "
            "(or mongodb+srv://), with the database name"
        )

    if problems:
        raise ConfigError(problems)
    assert redis is not None and queue_redis is not None
    default_port = constants.WORKER_HEALTH_PORT if worker_mode else constants.API_PORT
    default_connections = (
        constants.WORKER_MAX_CONNECTIONS if worker_mode else constants.API_MAX_CONNECTIONS
    )
    return Settings(
        **numbers,
        worker_mode=worker_mode,
        worker_processes=processes if processes is not None else min(64, cpus.available()),
        worker_processing_interval=interval_ms / 1000,
        queue_name=queue_name,
        redis=redis,
        queue_redis=queue_redis,
        mongodb_uri=Secret(mongodb_uri) if mongodb_uri else None,
        app_env=app_env,  # type: ignore[arg-type]
        host=host,
        port=port if port is not None else default_port,
        log_level=log_level,
        log_format=log_format or ("json" if app_env == "production" else "text"),  # type: ignore[arg-type]
        api_keys=api_keys,
        api_readonly_keys=readonly_keys,
        console_secret=Secret(console_secret) if console_secret else None,
        openapi_public=openapi_public,
        max_connections=max_connections or default_connections,
        handler_modules=tuple(handler_modules or ()),
        worker_queues=tuple(worker_queues or ()),
        durability=durability,  # type: ignore[arg-type]
        min_replicas=min_replicas,
        replica_timeout=replica_timeout_ms / 1000,
    )


def _keys(listed: str) -> tuple[Secret, ...]:
    """A comma-separated list of keys, blanks dropped."""
    return tuple(Secret(k.strip()) for k in listed.split(",") if k.strip())


def _mongodb_uri_ok(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("mongodb", "mongodb+srv") and bool(parts.path.strip("/"))


def _queue_name(value: str) -> None:
    # RQ accepts any name, but ours become key parts and URL segments: keep them plain.
    if not queues.valid_base(value):
        import environs

        raise environs.ValidationError(
            "expected a non-empty name of letters, digits, '-', '_', '.', "
            "not ending in .high or .low (those are its priority queues)"
        )


def _queue_names(values: list[str]) -> None:
    for value in values:
        _queue_name(value)
