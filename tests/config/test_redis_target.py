"""Where Redis is: Sentinel and TLS settings, and the errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config.redis_target import Tls
from service.config.settings import ConfigError, load


def problems(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(environ)
    return "\n".join(caught.value.problems)


def test_sentinels_name_the_primary_for_both_redis() -> None:
    settings = load(
        {"REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380", "REDIS_SENTINEL_MASTER": "jobs"}
    )
    assert settings.redis.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert settings.redis.sentinel_master == "jobs"
    # The queue's Redis, with no address of its own, is the same primary's database 1
    assert settings.queue_redis.sentinels == settings.redis.sentinels
    assert (settings.queue_redis.sentinel_master, settings.queue_redis.db) == ("jobs", 1)
    assert str(settings.queue_redis) == "redis://jobs/1 (Sentinel 10.0.0.1:26379,10.0.0.2:26380)"


def test_the_queue_may_have_sentinels_of_its_own() -> None:
    settings = load(
        {
            "REDIS_URL": "redis://app:6379/0",
            "QUEUE_REDIS_SENTINELS": "s1:26379",
            "QUEUE_REDIS_SENTINEL_MASTER": "queue",
            "QUEUE_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
        }
    )
    assert settings.redis.sentinels == ()
    assert settings.queue_redis.sentinels == (("s1", 26379),)
    assert "sentinel-secret" not in repr(settings)


def test_with_sentinels_a_urls_host_is_the_primarys_name() -> None:
    settings = load({"REDIS_URL": "rediss://:pw@jobs/2", "REDIS_SENTINELS": "s1:26379"})
    assert (settings.redis.sentinel_master, settings.redis.db, settings.redis.ssl) == (
        "jobs",
        2,
        True,
    )
    assert str(settings.redis) == "rediss://:*****@jobs/2 (Sentinel s1:26379)"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"REDIS_SENTINELS": "s1"}, "REDIS_SENTINELS='s1': expected host:port"),
        (
            {"REDIS_SENTINELS": "s1:26379"},
            "REDIS_SENTINEL_MASTER='': REDIS_SENTINELS='s1:26379' needs",
        ),
        ({"REDIS_SENTINEL_MASTER": "jobs"}, "REDIS_SENTINEL_MASTER='jobs': needs REDIS_SENTINELS"),
        (
            {"REDIS_URL": "redis://a/0", "REDIS_SENTINELS": "s:1", "REDIS_SENTINEL_MASTER": "b"},
            "REDIS_SENTINEL_MASTER='b' conflicts with REDIS_URL's host 'a'",
        ),
        ({"QUEUE_REDIS_SENTINELS": "s:99999"}, "QUEUE_REDIS_SENTINELS='s:99999'"),
    ],
)
def test_a_bad_sentinel_setting_names_the_variable_and_value(
    environ: dict[str, str], expected: str
) -> None:
    assert expected in problems(environ)


def test_tls_options_from_the_query_string_and_the_environment(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("x")
    settings = load(
        {
            "REDIS_URL": f"rediss://127.0.0.1:6380/0?ssl_ca_certs={ca}&ssl_cert_reqs=none",
            "REDIS_TLS_CERT_FILE": str(cert),
            "REDIS_TLS_KEY_FILE": str(key),
        }
    )
    assert settings.redis.tls == Tls(str(ca), str(cert), str(key), verify=False)
    assert settings.queue_redis.tls == settings.redis.tls  # the queue's inherits them
    assert str(settings.redis) == "rediss://127.0.0.1:6380/0"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"REDIS_URL": "rediss://h/0?verify=no"}, "unknown option 'verify' in the query string"),
        ({"REDIS_URL": "redis://h/0?ssl_ca_certs=/x"}, "ssl_ca_certs needs rediss:// (TLS)"),
        ({"REDIS_TLS_VERIFY": "maybe"}, "REDIS_TLS_VERIFY='maybe': expected required or none"),
        (
            {"REDIS_TLS_CA_FILE": "/no/such/ca.pem"},
            "REDIS_TLS_CA_FILE='/no/such/ca.pem': cannot read it",
        ),
        (
            {"REDIS_URL": "rediss://h/0?ssl_cert_reqs=none", "REDIS_TLS_VERIFY": "required"},
            "REDIS_TLS_VERIFY='required' conflicts with REDIS_URL's ssl_cert_reqs='none'",
        ),
        ({"QUEUE_REDIS_TLS_CERT_FILE": "/etc/hostname"}, "give both or neither"),
    ],
)
def test_a_bad_tls_setting_names_the_variable_and_value(
    environ: dict[str, str], expected: str
) -> None:
    assert expected in problems(environ)


def test_replicated_durability_and_its_settings() -> None:
    settings = load(
        {"DURABILITY": "replicated", "REDIS_MIN_REPLICAS": "2", "REDIS_REPLICA_TIMEOUT": "250"}
    )
    assert (settings.durability, settings.min_replicas, settings.replica_timeout) == (
        "replicated",
        2,
        0.25,
    )
    assert "REDIS_MIN_REPLICAS='0'" in problems({"REDIS_MIN_REPLICAS": "0"})
