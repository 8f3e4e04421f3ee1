"""Where a Redis is: `{prefix}URL` or `{prefix}HOST`/`PORT`/`DB`, or a primary found through
Sentinel (`{prefix}SENTINELS`, `{prefix}SENTINEL_MASTER`), with TLS options from the URL's
query string or `{prefix}TLS_*` paths. The queue's Redis (QUEUE_REDIS_*) takes whatever it
does not set from the application's (REDIS_*)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, urlsplit

from service.config.secret import Secret


@dataclass(frozen=True, slots=True)
class Tls:
    """How a `rediss://` target is verified and which client certificate it is shown."""

    ca_file: str | None = None  # the CA that signed the server's certificate (else the system's)
    cert_file: str | None = None  # a client certificate, for a server that requires one
    key_file: str | None = None
    verify: bool = True  # False (REDIS_TLS_VERIFY=none): any server certificate is accepted


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """One Redis: a host and port, or a primary found through Sentinel (`sentinels`), with
    its database, credentials and TLS (`ssl`, then `tls`)."""

    host: str
    port: int
    db: int
    password: Secret | None = None
    username: str | None = None
    ssl: bool = False
    tls: Tls = Tls()
    sentinels: tuple[tuple[str, int], ...] = ()  # empty: `host`:`port` directly
    sentinel_master: str = ""  # the primary's name in Sentinel
    sentinel_password: Secret | None = None  # the Sentinels' own password, if any

    @property
    def url(self) -> str:
        """The host's URL, secret included, without the TLS options or Sentinel (the clients
        are built from the fields: `store.connection`): never for a log."""
        scheme = "rediss" if self.ssl else "redis"
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password.reveal()}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        scheme = "rediss" if self.ssl else "redis"
        masked = ":*****@" if self.password is not None else ""
        if self.sentinels:
            via = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"{scheme}://{masked}{self.sentinel_master}/{self.db} (Sentinel {via})"
        return f"{scheme}://{masked}{self.host}:{self.port}/{self.db}"


# A rediss:// URL's query string, as redis-py names the options, and our variables for them.
_QUERY = {
    "ssl_ca_certs": "TLS_CA_FILE",
    "ssl_certfile": "TLS_CERT_FILE",
    "ssl_keyfile": "TLS_KEY_FILE",
    "ssl_cert_reqs": "TLS_VERIFY",
}
_VERIFY = {"required": True, "none": False}


def _masked(raw: str) -> str:
    try:
        password = urlsplit(raw).password
    except ValueError:
        password = None
    return raw.replace(password, "*****") if password else raw


def _parse_url(
    variable: str, raw: str, problems: list[str]
) -> tuple[RedisTarget, dict[str, str]] | None:
    """The target a URL names, and its query string's TLS options (by our variable's suffix)."""
    try:
        parts = urlsplit(raw)
        port = parts.port or 6379
        db_text = parts.path.lstrip("/") or "0"
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or not db_text.isdigit():
            raise ValueError
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        problems.append(
            f"{variable}={_masked(raw)!r}: expected "
            "redis[s]://[[user]:password@]host[:port][/db][?ssl_ca_certs=...]"
        )
        return None
    options: dict[str, str] = {}
    for name, value in query:
        if name not in _QUERY:
            problems.append(
                f"{variable}={_masked(raw)!r}: unknown option {name!r} in the query string "
                f"(known: {', '.join(_QUERY)})"
            )
        elif parts.scheme != "rediss":
            problems.append(f"{variable}={_masked(raw)!r}: {name} needs rediss:// (TLS)")
        else:
            options[_QUERY[name]] = value
    password = Secret(parts.password) if parts.password is not None else None
    target = RedisTarget(
        parts.hostname,
        port,
        int(db_text),
        password,
        parts.username or None,
        parts.scheme == "rediss",
    )
    return target, options


def _tls(
    env: Mapping[str, str],
    prefix: str,
    url_var: str,
    from_url: dict[str, str],
    fallback: Tls,
    problems: list[str],
) -> Tls:
    """The TLS options: each from `{prefix}TLS_*`, else the URL's query string, else `fallback`
    (the application's, for the queue's Redis); both given and differing is an error."""
    values: dict[str, str | None] = {}
    for suffix in _QUERY.values():
        variable = prefix + suffix
        value = env.get(variable) or None
        in_url = from_url.get(suffix)
        if value is not None and in_url is not None and value != in_url:
            problems.append(
                f"{variable}={value!r} conflicts with {url_var}'s "
                f"{next(k for k, v in _QUERY.items() if v == suffix)}={in_url!r}: set one"
            )
        values[suffix] = value if value is not None else in_url
    verify = fallback.verify
    verify_text = values["TLS_VERIFY"]
    if verify_text is not None:
        if verify_text.lower() in _VERIFY:
            verify = _VERIFY[verify_text.lower()]
        else:
            problems.append(f"{prefix}TLS_VERIFY={verify_text!r}: expected required or none")
    found = Tls(
        values["TLS_CA_FILE"] or fallback.ca_file,
        values["TLS_CERT_FILE"] or fallback.cert_file,
        values["TLS_KEY_FILE"] or fallback.key_file,
        verify,
    )
    for suffix, path in (
        ("TLS_CA_FILE", found.ca_file),
        ("TLS_CERT_FILE", found.cert_file),
        ("TLS_KEY_FILE", found.key_file),
    ):
        if path is not None and path is not getattr(fallback, suffix[4:].lower()):
            _readable(prefix + suffix, path, problems)
    if (found.cert_file is None) != (found.key_file is None):
        problems.append(
            f"{prefix}TLS_CERT_FILE={found.cert_file or ''!r}, "
            f"{prefix}TLS_KEY_FILE={found.key_file or ''!r}: give both or neither"
        )
    return found


def _readable(variable: str, path: str, problems: list[str]) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        problems.append(f"{variable}={path!r}: cannot read it ({exc.strerror})")


def _sentinels(variable: str, raw: str, problems: list[str]) -> tuple[tuple[str, int], ...]:
    found = []
    for item in (part.strip() for part in raw.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{variable}={raw!r}: expected host:port[,host:port...], not {item!r}")
            return ()
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def read_target(
    env: Mapping[str, str],
    prefix: str,
    fallback: RedisTarget,
    default_db: int,
    problems: list[str],
) -> RedisTarget | None:
    """Read {prefix}URL or {prefix}HOST/PORT(/DB), then the TLS and Sentinel variables; both
    forms given and disagreeing is an error. Unset parts come from `fallback`."""
    url_var = f"{prefix}URL"
    host_var, port_var, db_var = f"{prefix}HOST", f"{prefix}PORT", f"{prefix}DB"
    host = env.get(host_var) or fallback.host
    port_text = env.get(port_var)
    db_text = env.get(db_var)
    port, db = fallback.port, default_db
    if port_text is not None:
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            problems.append(f"{port_var}={port_text!r}: expected a port number 1-65535")
    if db_text is not None:
        if db_text.isdigit() and int(db_text) < 16:
            db = int(db_text)
        else:
            problems.append(f"{db_var}={db_text!r}: expected a database number 0-15")
    target = replace(fallback, host=host, port=port, db=db)
    raw_url = env.get(url_var)
    options: dict[str, str] = {}
    if raw_url:
        parsed = _parse_url(url_var, raw_url, problems)
        if parsed is None:
            return None
        target, options = parsed
        given = {host_var: target.host, port_var: str(target.port), db_var: str(target.db)}
        if env.get(f"{prefix}SENTINELS"):
            del given[host_var], given[port_var]  # the URL's host names the primary
        for variable, url_value in given.items():
            if env.get(variable) not in (None, url_value):
                problems.append(
                    f"{variable}={env[variable]!r} conflicts with {url_var}={target!s}: set one"
                )
    inherited = fallback.tls if target.ssl == fallback.ssl else Tls()
    target = replace(target, tls=_tls(env, prefix, url_var, options, inherited, problems))
    return _with_sentinels(
        env, prefix, target, fallback, bool(raw_url or env.get(host_var)), problems
    )


def _with_sentinels(
    env: Mapping[str, str],
    prefix: str,
    target: RedisTarget,
    fallback: RedisTarget,
    own_address: bool,
    problems: list[str],
) -> RedisTarget:
    """`target`, found through Sentinel when {prefix}SENTINELS is set (or, for the queue's
    Redis with no address of its own, when the application's is)."""
    list_var, master_var = f"{prefix}SENTINELS", f"{prefix}SENTINEL_MASTER"
    raw = env.get(list_var)
    master = env.get(master_var) or ""
    password = env.get(f"{prefix}SENTINEL_PASSWORD") or None
    if not raw:
        if master:
            problems.append(f"{master_var}={master!r}: needs {list_var} (where the Sentinels are)")
        if own_address or not fallback.sentinels:
            return replace(target, sentinels=(), sentinel_master="", sentinel_password=None)
        return target  # the application's Sentinel, with this target's database
    sentinels = _sentinels(list_var, raw, problems)
    url_var = f"{prefix}URL"
    if env.get(url_var):
        if master and master != target.host:
            problems.append(
                f"{master_var}={master!r} conflicts with {url_var}'s host {target.host!r} "
                "(with Sentinel, the URL's host is the primary's name): set one"
            )
        master = master or target.host
    if not master:
        problems.append(
            f"{master_var}='': {list_var}={raw!r} needs the name Sentinel knows the primary by"
        )
    return replace(
        target,
        sentinels=sentinels,
        sentinel_master=master,
        sentinel_password=Secret(password) if password else fallback.sentinel_password,
    )
