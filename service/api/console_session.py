"""Who a request is: an API key (bearer header) or a console session (signed cookie), and what
it may do (`full` or `read`).

The session cookie holds no key: `<role>.<expiry>.<key id>.<signature>`, the key id being a
hash of the key it was opened with (so removing a key from API_KEYS ends its sessions) and the
signature an HMAC by the console secret. The secret is CONSOLE_SECRET, else derived from the
keys themselves: every API replica given the same keys derives the same secret and accepts the
others' sessions, and changing the keys ends every session. With no key at all there is nothing
to sign (no login) and the secret is random per process.

A state-changing request authenticated by the cookie must carry `X-CSRF-Token` (an HMAC of the
cookie, handed to the page by GET /console/api/session) and, when the browser sends one, an
Origin equal to the request's own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service.config.settings import Secret, Settings

Role = Literal["full", "read"]
COOKIE = "console_session"
CSRF_HEADER = b"x-csrf-token"
SESSION_SECONDS = 12 * 3600  # a console login lasts this long
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"console-key:" + key).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    cookie: str | None = None  # the session cookie it came with, if any


class Keys:
    """The configured keys by role, the console secret, and the checks on both."""

    def __init__(
        self, full: Sequence[Secret], read: Sequence[Secret], secret: Secret | None
    ) -> None:
        self.full = [k.reveal().encode() for k in full]
        self.read = [k.reveal().encode() for k in read]
        self.ids: dict[str, Role] = {_key_id(k): "full" for k in self.full}
        self.ids.update({_key_id(k): "read" for k in self.read})
        if secret is not None:
            self.secret = hashlib.sha256(b"console-secret:" + secret.reveal().encode()).digest()
        elif self.ids:
            derived = "\n".join(sorted(f"{role}:{kid}" for kid, role in self.ids.items()))
            self.secret = hmac.new(b"console-derived", derived.encode(), "sha256").digest()
        else:
            self.secret = secrets.token_bytes(32)

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        return cls(settings.api_keys, settings.api_readonly_keys, settings.console_secret)

    @property
    def required(self) -> bool:
        """Whether any key is set: then nothing protected is open."""
        return bool(self.ids)

    def role_of(self, key: bytes) -> Role | None:
        """The role of a key, compared with every key in constant time."""
        full = read = False
        for k in self.full:
            full |= hmac.compare_digest(key, k)
        for k in self.read:
            read |= hmac.compare_digest(key, k)
        return "full" if full else "read" if read else None

    def bearer(self, authorization: bytes) -> Role | None:
        scheme, _, token = authorization.partition(b" ")
        role = self.role_of(token.strip())
        return role if scheme.lower() == b"bearer" else None

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), "sha256").hexdigest()

    def open_session(self, key: bytes, now: float | None = None) -> str | None:
        """A new session cookie's value for `key`, or None when it is no key of ours."""
        role = self.role_of(key)
        if role is None:
            return None
        expiry = int((now or time.time()) + SESSION_SECONDS)
        body = f"{role}.{expiry}.{_key_id(key)}"
        return f"{body}.{self._sign(body)}"

    def session(self, cookie: str, now: float | None = None) -> Identity | None:
        """The identity a cookie proves: signed by us, not expired, its key still configured."""
        body, _, signature = cookie.rpartition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        role, expiry, kid = [*body.split("."), "", "", ""][:3]
        if not expiry.isdigit() or int(expiry) < (now or time.time()):
            return None
        known = self.ids.get(kid)
        if known is None or known != role:  # the key was removed, or changed role
            return None
        return Identity(known, cookie)

    def csrf(self, cookie: str) -> str:
        """The CSRF token that goes with a session cookie."""
        return self._sign("csrf:" + cookie)[:40]

    def csrf_ok(self, cookie: str, token: bytes) -> bool:
        return hmac.compare_digest(self.csrf(cookie).encode(), token)


def cookie_of(headers: dict[bytes, bytes]) -> str | None:
    """The console session cookie's value, if the request carries one."""
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def same_origin(headers: dict[bytes, bytes], scheme: str) -> bool:
    """No Origin header (not sent by a browser), or one naming this very host."""
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return origin.decode("latin-1") in (f"{scheme}://{host}", f"https://{host}")
