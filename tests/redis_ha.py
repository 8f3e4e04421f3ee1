"""Production-shaped Redis for the tests: a TLS-only redis-server with a throwaway CA, and a
primary with replicas watched by Sentinels, as real processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from service.dev.embedded_redis import find_redis_server, free_port

MASTER = "jobs"  # the primary's name in Sentinel


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying with it must fail


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _key_and_request(directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    _openssl(
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        subject,
    )
    return key, csr


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
    )
    return key, cert


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    key, csr = _key_and_request(directory, name, f"/CN={name}")
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    cert = directory / f"{name}.crt"
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca[1],
        "-CAkey",
        ca[0],
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "1",
        "-extfile",
        ext,
    )
    return cert, key


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed."""
    ca = _ca(directory, "test-ca")
    server = _signed(directory, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    other = _ca(directory, "other-ca")
    return Certs(ca[1], *server, *client, other[1])


class Node:
    """One redis-server (or `redis-server --sentinel`) process."""

    def __init__(
        self,
        args: list[str],
        port: int,
        client: Callable[[], redis.Redis],
        directory: str | None = None,
    ) -> None:
        self.port = port
        self.dir = directory or tempfile.mkdtemp(prefix="service-redis-ha-")
        self._args = args
        self._client = client
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Node:
        binary = find_redis_server()
        assert binary is not None, "these tests need redis-server"
        self.process = subprocess.Popen(
            [binary, *self._args, "--dir", self.dir, "--logfile", os.path.join(self.dir, "log")],
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        client = self._client()
        try:
            while True:
                assert self.process.poll() is None, f"redis-server exited: {self.log()}"
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def log(self) -> str:
        try:
            return Path(self.dir, "log").read_text()[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crashed host."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def tls_node(certs: Certs) -> Node:
    """redis-server on TLS only (`--port 0`), client certificates required (its default)."""
    port = free_port()
    args = [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        str(certs.server_cert),
        "--tls-key-file",
        str(certs.server_key),
        "--tls-ca-cert-file",
        str(certs.ca),
        "--save",
        "",
        "--appendonly",
        "no",
    ]

    def client() -> redis.Redis:
        return redis.Redis(
            port=port,
            ssl=True,
            ssl_ca_certs=str(certs.ca),
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
            socket_connect_timeout=0.5,
        )

    return Node(args, port, client)


def plain_node(*extra: str) -> Node:
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", *extra]
    return Node(args, port, lambda: redis.Redis(port=port, socket_connect_timeout=0.5))


class Group:
    """A primary, its replicas and Sentinels watching it (quorum 2), as in production."""

    def __init__(self, replicas: int = 2, sentinels: int = 3) -> None:
        self.primary = plain_node("--appendonly", "no")
        self.replicas: list[Node] = []
        self.sentinels: list[Node] = []
        self._counts = (replicas, sentinels)

    def start(self) -> Group:
        self.primary.start()
        for _ in range(self._counts[0]):
            self.replicas.append(
                plain_node("--replicaof", "127.0.0.1", str(self.primary.port)).start()
            )
        for _ in range(self._counts[1]):
            self.sentinels.append(self._sentinel().start())
        return self

    def _sentinel(self) -> Node:
        port = free_port()
        directory = tempfile.mkdtemp(prefix="service-sentinel-")
        conf = Path(directory, "sentinel.conf")
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
            f"sentinel parallel-syncs {MASTER} 2\n"
        )
        return Node(
            [str(conf), "--sentinel"],
            port,
            lambda: redis.Redis(port=port, socket_connect_timeout=0.5),
            directory,
        )

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary's port as a Sentinel sees it now."""
        client = redis.Redis(port=self.sentinels[0].port, socket_timeout=1)
        try:
            found: Any = client.sentinel_get_master_addr_by_name(MASTER)
            return int(found[1]) if found else None
        finally:
            client.close()

    def node(self, port: int) -> Node:
        return next(n for n in [self.primary, *self.replicas] if n.port == port)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.replicas, self.primary]:
            node.stop()


@dataclass
class Ack:
    key: str
    id: str
    at: float  # monotonic seconds when the 2xx came
    tries: int  # requests it took (a 503 or a lost connection is retried, same key)


class SteadyPublisher:
    """HTTP publishes at a steady rate, each with its own Idempotency-Key and retried with that
    key until a 2xx, as a careful client does; in a thread. `acks` lists the acknowledged."""

    def __init__(self, url: str, rate: float, body: Callable[[int], dict[str, Any]]) -> None:
        self.url = url
        self.interval = 1 / rate
        self.body = body
        self.acks: list[Ack] = []
        self.failures: list[tuple[float, int | str]] = []  # (when, status or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from tests.conftest import http

        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            key, tries = f"k{n}", 0
            while True:  # the same key until acknowledged: a retry is safe
                tries += 1
                try:
                    status, _, reply = http(
                        "POST", f"{self.url}/jobs", self.body(n), {"Idempotency-Key": key}, 3
                    )
                except OSError as exc:
                    status, reply = 0, str(exc)
                if status in (200, 201, 202):
                    self.acks.append(Ack(key, reply["id"], time.monotonic(), tries))
                    break
                self.failures.append((time.monotonic(), status or str(reply)))
                if self._stop.wait(0.05):
                    return
            n += 1
            next_at = max(next_at + self.interval, time.monotonic() - 1)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def recovered_at(self, after: float, window: float = 1.0) -> float | None:
        """When acknowledgements came at the full rate again after `after`: the start of the
        first `window` s past the last failure with as many acks as the rate promises (90 %)."""
        failed = [at for at, _ in self.failures if at >= after]
        start = max(failed, default=after)
        acks = sorted(a.at for a in self.acks if a.at >= start)
        needed = 0.9 * window / self.interval
        for i, at in enumerate(acks):
            if sum(1 for t in acks[i:] if t < at + window) >= needed:
                return at
        return None


def watched(group: Group) -> bool:
    """Every Sentinel knows both replicas and the two other Sentinels (so they can vote)."""
    for node in group.sentinels:
        client = redis.Redis(port=node.port, socket_timeout=1)
        try:
            state: Any = client.sentinel_master(MASTER)
        finally:
            client.close()
        if int(state["num-slaves"]) < 2 or int(state["num-other-sentinels"]) < 2:
            return False
    return True


def sentinel_env(group: Group, **overrides: str) -> dict[str, str]:
    from tests.conftest import base_env

    return base_env(
        "unused",
        REDIS_URL="",
        QUEUE_REDIS_URL="",
        REDIS_SENTINELS=group.addresses,
        REDIS_SENTINEL_MASTER=MASTER,
        **overrides,
    )
