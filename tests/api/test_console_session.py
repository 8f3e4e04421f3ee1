"""Console sessions and key roles: the signed cookie, its expiry, its key's removal, CSRF."""

from __future__ import annotations

from service.api.console_session import SESSION_SECONDS, Keys, cookie_of, same_origin
from service.config.settings import Secret

FULL, READ = Secret("full-key"), Secret("read-key")


def test_roles_of_keys() -> None:
    keys = Keys([FULL], [READ], None)
    assert keys.role_of(b"full-key") == "full"
    assert keys.role_of(b"read-key") == "read"
    assert keys.role_of(b"other") is None
    assert keys.bearer(b"Bearer read-key") == "read"
    assert keys.bearer(b"Basic full-key") is None
    assert keys.required and not Keys([], [], None).required


def test_a_session_carries_its_role_until_it_expires() -> None:
    keys = Keys([FULL], [READ], None)
    cookie = keys.open_session(b"read-key", now=1000.0)
    assert cookie is not None and "read-key" not in cookie  # the key itself is never in it
    identity = keys.session(cookie, now=1001.0)
    assert identity is not None and identity.role == "read"
    assert keys.session(cookie, now=1000.0 + SESSION_SECONDS + 1) is None
    assert keys.open_session(b"nope") is None


def test_a_forged_or_altered_cookie_is_refused() -> None:
    keys = Keys([FULL], [READ], None)
    cookie = keys.open_session(b"read-key")
    assert cookie is not None
    assert keys.session(cookie.replace("read.", "full.", 1)) is None
    assert keys.session(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    assert keys.session("garbage") is None


def test_replicas_with_the_same_keys_accept_each_others_sessions() -> None:
    cookie = Keys([FULL], [READ], None).open_session(b"full-key")
    assert cookie is not None
    assert Keys([FULL], [READ], None).session(cookie) is not None
    # a key removed ends its sessions; another secret signs differently
    assert Keys([Secret("new-key")], [READ], None).session(cookie) is None
    assert Keys([FULL], [READ], Secret("s" * 32)).session(cookie) is None
    shared = Keys([FULL], [], Secret("s" * 32)).open_session(b"full-key")
    assert shared is not None and Keys([FULL], [], Secret("s" * 32)).session(shared) is not None


def test_csrf_token_is_bound_to_the_session() -> None:
    keys = Keys([FULL], [], None)
    one, two = keys.open_session(b"full-key", 1.0), keys.open_session(b"full-key", 2.0)
    assert one and two
    assert keys.csrf_ok(one, keys.csrf(one).encode())
    assert not keys.csrf_ok(one, keys.csrf(two).encode())
    assert not keys.csrf_ok(one, b"")


def test_cookie_and_origin_parsing() -> None:
    assert cookie_of({b"cookie": b"a=1; console_session=abc.def; b=2"}) == "abc.def"
    assert cookie_of({b"cookie": b"a=1"}) is None
    host = {b"host": b"jobs.example:3001"}
    assert same_origin(host, "http")
    assert same_origin({**host, b"origin": b"http://jobs.example:3001"}, "http")
    assert same_origin({**host, b"origin": b"https://jobs.example:3001"}, "http")  # behind TLS
    assert not same_origin({**host, b"origin": b"https://evil.example"}, "http")
