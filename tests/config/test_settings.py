"""Settings: one immutable object, every problem reported at once, exit 78 before any port."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys

import pytest

from service.config import constants
from service.config.settings import ConfigError, Secret, load
from service.dev.embedded_redis import free_port
from tests.conftest import ROOT, env_file


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env)
    return str(caught.value)


def test_defaults() -> None:
    settings = load({})
    assert settings.worker_mode is False
    assert (settings.worker_concurrency, settings.worker_batch_size) == (5, 50)
    assert settings.worker_processing_interval == 5.0
    assert settings.queue_name == "app-queue"
    assert (settings.queue_redis.host, settings.queue_redis.port, settings.queue_redis.db) == (
        "127.0.0.1",
        6379,
        1,
    )
    assert settings.redis.db == 0
    assert settings.port == constants.API_PORT
    assert settings.log_format == "text"
    assert settings.mongodb_uri is None
    assert settings.max_result_bytes == 1024 * 1024


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load({}).queue_name = "other"  # type: ignore[misc]


def test_worker_mode_changes_default_port() -> None:
    assert load({"WORKER_MODE": "true"}).port == constants.WORKER_HEALTH_PORT
    assert load({"WORKER_MODE": "true", "PORT": "9000"}).port == 9000


def test_every_problem_is_reported_at_once_with_variable_and_value() -> None:
    text = problems(
        {
            "WORKER_MODE": "maybe",
            "WORKER_CONCURRENCY": "1001",
            "WORKER_BATCH_SIZE": "0",
            "WORKER_PROCESSING_INTERVAL": "999",
            "QUEUE_NAME": "bad name",
            "APP_ENV": "staging",
            "PORT": "http",
            "LOG_LEVEL": "LOUD",
            "LOG_FORMAT": "xml",
            "SHUTDOWN_TIMEOUT": "-1",
            "MAX_BODY_BYTES": "10",
        }
    )
    for fragment in (
        "WORKER_MODE='maybe'",
        "WORKER_CONCURRENCY='1001'",
        "WORKER_BATCH_SIZE='0'",
        "WORKER_PROCESSING_INTERVAL='999'",
        "QUEUE_NAME='bad name'",
        "APP_ENV='staging'",
        "PORT='http'",
        "LOG_LEVEL='LOUD'",
        "LOG_FORMAT='xml'",
        "SHUTDOWN_TIMEOUT='-1'",
        "MAX_BODY_BYTES='10'",
    ):
        assert fragment in text


@pytest.mark.parametrize(
    ("variable", "good", "bad"),
    [
        ("WORKER_CONCURRENCY", "1000", "0"),
        ("WORKER_PROCESSES", "64", "65"),
        ("WORKER_PROCESSES", "1", "0"),
        ("WORKER_BATCH_SIZE", "1000", "1001"),
        ("WORKER_PROCESSING_INTERVAL", "60000", "60001"),
        ("MAX_RESULT_BYTES", "1024", "1023"),
        ("MAX_RESULT_BYTES", str(64 * 1024 * 1024), str(64 * 1024 * 1024 + 1)),
    ],
)
def test_ranges(variable: str, good: str, bad: str) -> None:
    load({variable: good})
    assert f"{variable}={bad!r}" in problems({variable: bad})


def test_processing_interval_is_read_in_milliseconds() -> None:
    assert load({"WORKER_PROCESSING_INTERVAL": "1500"}).worker_processing_interval == 1.5


def test_queue_redis_defaults_to_the_app_redis_host_in_db_1() -> None:
    settings = load({"REDIS_HOST": "cache", "REDIS_PORT": "6380"})
    assert (settings.redis.host, settings.redis.port, settings.redis.db) == ("cache", 6380, 0)
    queue = settings.queue_redis
    assert (queue.host, queue.port, queue.db) == ("cache", 6380, 1)


def test_queue_redis_variables_override() -> None:
    settings = load({"QUEUE_REDIS_HOST": "q", "QUEUE_REDIS_PORT": "7000", "QUEUE_REDIS_DB": "3"})
    assert (settings.queue_redis.host, settings.queue_redis.port, settings.queue_redis.db) == (
        "q",
        7000,
        3,
    )


def test_url_form() -> None:
    settings = load({"QUEUE_REDIS_URL": "redis://:s3cret@q:7001/4", "REDIS_URL": "redis://a:6000"})
    assert settings.queue_redis.url == "redis://:s3cret@q:7001/4"
    assert (settings.redis.host, settings.redis.port, settings.redis.db) == ("a", 6000, 0)


def test_conflicting_url_and_parts_is_an_error() -> None:
    text = problems({"REDIS_URL": "redis://a:6000/0", "REDIS_HOST": "b"})
    assert "REDIS_HOST='b' conflicts with REDIS_URL" in text
    load({"REDIS_URL": "redis://a:6000/0", "REDIS_HOST": "a"})  # agreeing is fine


def test_secrets_are_masked_everywhere() -> None:
    text = problems(
        {
            "QUEUE_REDIS_URL": "redis://:hunter2@q:1/0",
            "QUEUE_REDIS_HOST": "other",
            "MONGODB_URI": "postgres://user:hunter2@x",
        }
    )
    assert "hunter2" not in text
    settings = load({"QUEUE_REDIS_URL": "redis://:hunter2@q:1/0", "API_KEYS": "hunter2"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.queue_redis)
    assert settings.api_keys == (Secret("hunter2"),)


# Long enough for production (MIN_API_KEY_CHARS), and plainly not secrets.
KEY1 = "test-key-one-" + "1" * 32
KEY2 = "test-key-two-" + "2" * 32


def test_production_requires_api_keys_and_logs_json() -> None:
    assert "API_KEYS" in problems({"APP_ENV": "production"})
    settings = load({"APP_ENV": "production", "API_KEYS": f"{KEY1}, {KEY2}"})
    assert [k.reveal() for k in settings.api_keys] == [KEY1, KEY2]
    assert settings.log_format == "json"
    production = {"APP_ENV": "production", "API_KEYS": KEY1, "LOG_FORMAT": "text"}
    assert load(production).log_format == "text"


def test_production_refuses_short_api_keys_and_names_them_masked() -> None:
    short = "k" * (constants.MIN_API_KEY_CHARS - 1)
    text = problems({"APP_ENV": "production", "API_KEYS": f"{KEY1},{short}"})
    assert "API_KEYS='*****'" in text and short not in text and KEY1 not in text
    assert f"at least {constants.MIN_API_KEY_CHARS} characters (number 2 of 2" in text
    assert "secrets.token_urlsafe(32)" in text
    # A worker given keys (its /metrics needs one) is held to the same rule.
    assert "API_KEYS" in problems({"APP_ENV": "production", "WORKER_MODE": "true", "API_KEYS": "k"})
    # Development takes any key.
    assert load({"API_KEYS": "dev"}).api_keys == (Secret("dev"),)


def test_max_connections_defaults_per_mode_and_is_bounded() -> None:
    assert load({}).max_connections == constants.API_MAX_CONNECTIONS
    assert load({"WORKER_MODE": "true"}).max_connections == constants.WORKER_MAX_CONNECTIONS
    assert load({"MAX_CONNECTIONS": "64"}).max_connections == 64
    for bad in ("0", "-1", "many", "2000000"):
        assert f"MAX_CONNECTIONS={bad!r}" in problems({"MAX_CONNECTIONS": bad})


def test_openapi_is_private_unless_made_public() -> None:
    assert load({}).openapi_public is False
    assert load({"OPENAPI_PUBLIC": "true"}).openapi_public is True
    assert "OPENAPI_PUBLIC='maybe'" in problems({"OPENAPI_PUBLIC": "maybe"})


def test_lists_and_optional_values() -> None:
    settings = load(
        {
            "HANDLER_MODULES": "a.b,c",
            "MONGODB_URI": "mongodb://m/db",
            "SHUTDOWN_TIMEOUT": "3.5",
            "MAX_BODY_BYTES": "2048",
            "HOST": "127.0.0.1",
        }
    )
    assert settings.handler_modules == ("a.b", "c")
    assert settings.mongodb_uri is not None and settings.mongodb_uri.reveal() == "mongodb://m/db"
    assert (settings.shutdown_timeout, settings.max_body_bytes, settings.host) == (
        3.5,
        2048,
        "127.0.0.1",
    )


def _run_main(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("mode", ["false", "true"])
def test_bad_config_exits_78_without_traceback_before_binding(mode: str) -> None:
    port = free_port()
    result = _run_main(
        {
            "WORKER_MODE": mode,
            "PORT": str(port),
            "WORKER_CONCURRENCY": "0",
            "QUEUE_REDIS_URL": "redis://:topsecret@nowhere:1/1",
            "REDIS_HOST": "x",
        }
    )
    assert result.returncode == constants.EXIT_CONFIG
    assert "WORKER_CONCURRENCY='0'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "topsecret" not in result.stderr
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))


def test_unimportable_handler_module_exits_78() -> None:
    result = _run_main({"HANDLER_MODULES": "no_such_module_here", "PORT": str(free_port())})
    assert result.returncode == constants.EXIT_CONFIG
    assert "HANDLER_MODULES='no_such_module_here'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "fly"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 64
    assert "usage" in result.stderr


def test_production_worker_needs_no_api_keys() -> None:
    assert load({"APP_ENV": "production", "WORKER_MODE": "true"}).api_keys == ()


class RecordingEnv(dict[str, str]):
    """A mapping that remembers every variable name looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def test_env_example_lists_exactly_the_variables_the_service_reads() -> None:
    environ = RecordingEnv()
    load(environ)
    dev_only = {"WORKER_PORT"}  # read by `python -m service dev`
    assert set(env_file("example")) == environ.read | dev_only


@pytest.mark.parametrize(
    "name",
    ["api.development", "worker.development", "api.production", "worker.production", "example"],
)
def test_env_files_are_valid(name: str) -> None:
    values = {k: v for k, v in env_file(name).items() if v}
    if name == "api.production":
        values["API_KEYS"] = KEY1  # from the host environment
    settings = load(values)
    assert settings.worker_mode is name.startswith("worker")
    assert (
        "API_KEYS" not in env_file(name) or not env_file(name)["API_KEYS"]
    )  # no secret in the repo


def test_lifecycle_settings() -> None:
    settings = load(
        {"WORKER_QUEUES": "emails, reports", "MAX_CRASHES": "5", "IDEMPOTENCY_TTL": "3600"}
    )
    assert settings.worker_queues == ("emails", "reports")
    assert (settings.max_crashes, settings.idempotency_ttl) == (5, 3600)
    text = problems(
        {"WORKER_QUEUES": "ok,bad name,x.high", "MAX_CRASHES": "0", "IDEMPOTENCY_TTL": "1"}
    )
    assert "WORKER_QUEUES='ok,bad name,x.high'" in text
    assert "MAX_CRASHES='0'" in text and "IDEMPOTENCY_TTL='1'" in text


def test_max_backlog() -> None:
    assert load({}).max_backlog == 0  # no limit
    assert load({"MAX_BACKLOG": "10000"}).max_backlog == 10000
    text = problems({"MAX_BACKLOG": "-1"})
    assert "MAX_BACKLOG='-1'" in text
    assert "MAX_BACKLOG='many'" in problems({"MAX_BACKLOG": "many"})


def test_retention_limits() -> None:
    settings = load({})
    assert (settings.max_result_ttl, settings.max_failure_ttl) == (7 * 24 * 3600, 30 * 24 * 3600)
    assert settings.dead_max_jobs == 10_000
    raised = load({"MAX_RESULT_TTL": "31536000", "MAX_FAILURE_TTL": "1", "DEAD_MAX_JOBS": "1"})
    assert raised.retention.args() == [31536000, 1, 1]
    text = problems({"MAX_RESULT_TTL": "0", "MAX_FAILURE_TTL": "31536001", "DEAD_MAX_JOBS": "0"})
    assert "MAX_RESULT_TTL='0'" in text
    assert "MAX_FAILURE_TTL='31536001'" in text
    assert "DEAD_MAX_JOBS='0'" in text
    assert "MAX_RESULT_TTL='a week'" in problems({"MAX_RESULT_TTL": "a week"})


def test_read_only_keys_and_the_console_secret() -> None:
    settings = load({"API_KEYS": "a", "API_READONLY_KEYS": " r1, r2 ,", "CONSOLE_SECRET": "s" * 32})
    assert [k.reveal() for k in settings.api_readonly_keys] == ["r1", "r2"]
    assert settings.console_secret is not None and "s" * 32 not in repr(settings)
    with pytest.raises(ConfigError) as raised:
        load({"API_KEYS": "a,b", "API_READONLY_KEYS": "b", "CONSOLE_SECRET": "short"})
    message = str(raised.value)
    assert "API_READONLY_KEYS='*****'" in message and "CONSOLE_SECRET='*****'" in message
