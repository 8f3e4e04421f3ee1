"""MAX_CONNECTIONS and the open-file limit: a client holding more idle sockets than the
process may open files cannot lock out a probe, on the API or on the worker's health server.

The servers run as real processes, some with a low RLIMIT_NOFILE set before they start."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.config import constants
from service.net.connections import Connections
from tests.conftest import ServiceProcess, http, wait_for

Start = Callable[..., ServiceProcess]


def file_limit(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn: the child starts with this RLIMIT_NOFILE (as `ulimit -n` would set it)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["Threads"])


def limits(pid: int) -> tuple[str, str]:
    """The process's soft and hard open-file limits, as /proc shows them."""
    with open(f"/proc/{pid}/limits") as table:
        line = next(line for line in table if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return soft, hard


@contextlib.contextmanager
def idle_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never complete a request: every other one sends nothing, the
    rest the first bytes of a request line. Each connect must succeed within 3 s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:  # this test process's own limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    opened: list[socket.socket] = []
    try:
        for n in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=3)
            opened.append(conn)
            if n % 2:
                conn.sendall(b"GET /hea")
        yield opened
    finally:
        for conn in opened:
            conn.close()


def closed_by_server(conns: list[socket.socket]) -> int:
    """How many of these connections the server has closed (without reading them)."""
    closed = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            closed += conn.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def timed_health(url: str) -> float:
    """Seconds for GET /health to answer 200 (fails the test otherwise)."""
    begun = time.monotonic()
    status, _, body = http("GET", f"{url}/health", timeout=5)
    assert status == 200, body
    return time.monotonic() - begun


# --- The policy ----------------------------------------------------------------------------
def test_at_the_limit_the_connection_waiting_longest_makes_room() -> None:
    closed: list[str] = []
    conns: Connections[str] = Connections(3, closed.append, "test")
    for name in ("a", "b", "c"):
        assert conns.opened(name)
    conns.began("a")  # a's head is on its way: it goes after every idle one
    assert conns.opened("d") and closed == ["b"]
    conns.serving("c")  # c is being answered: never closed to make room
    assert conns.opened("e") and closed == ["b", "d"]
    assert conns.opened("f") and closed == ["b", "d", "e"]
    conns.idle("c")  # c's answer is sent; it waits for the next request, the newest waiter
    assert conns.opened("g") and closed == ["b", "d", "e", "f"]
    assert conns.opened("h") and closed[-1] == "c"
    conns.serving("g")
    conns.serving("h")
    assert conns.opened("i") and closed[-1] == "a"  # no idle one left: then a
    assert len(conns) == 3


def test_when_every_connection_is_served_a_new_one_is_refused() -> None:
    closed: list[str] = []
    conns: Connections[str] = Connections(2, closed.append, "test")
    for name in ("a", "b"):
        assert conns.opened(name)
        conns.began(name)
        conns.serving(name)
    assert not conns.opened("c") and closed == [] and len(conns) == 2
    conns.closed("a")
    assert conns.opened("c")
    conns.serving("c")
    conns.unserved("b")  # b lingers after an early answer: it may make room
    assert conns.opened("d") and closed == ["b"]


# --- The API ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_api_serves_probes_while_idle_sockets_outnumber_its_file_limit(
    start_service: Start,
) -> None:
    """1,200 connections that never send a request, against a process that may open 1,000
    files: the API keeps MAX_CONNECTIONS (100) of them, closing the longest waiting to make room,
    and /health answers at once. Without a limit, the files run out and every new connection
    fails until REQUEST_HEADER_TIMEOUT (10 s) frees some."""
    api = start_service(MAX_CONNECTIONS="100", preexec_fn=file_limit(1000, 1000))
    before = open_files(api.process.pid)
    with idle_sockets(api.port, 1200) as conns:
        seconds = [timed_health(api.url) for _ in range(5)]
        assert max(seconds) < 1.0, seconds
        assert open_files(api.process.pid) <= before + 100 + 5
        wait_for(lambda: closed_by_server(conns) >= 1200 - 100)
    print(f"GET /health with 1,200 idle sockets open: {max(seconds) * 1000:.1f} ms at most")
    assert "Too many open files" not in api.output and "out of system resource" not in api.output
    assert "MAX_CONNECTIONS (100) reached" in api.output


@pytest.mark.slow
def test_the_api_refuses_a_connection_when_every_one_is_being_served(
    start_service: Start,
) -> None:
    """Four requests whose bodies never come (each waits REQUEST_BODY_TIMEOUT): a fifth
    connection is closed at once; once their time is up, requests are served again."""
    api = start_service(MAX_CONNECTIONS="4", REQUEST_BODY_TIMEOUT="2")
    head = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 100\r\n\r\n"
    waiting = [socket.create_connection(("127.0.0.1", api.port), timeout=5) for _ in range(4)]
    try:
        for conn in waiting:
            conn.sendall(head)
        time.sleep(0.2)  # their heads are parsed: they are being served
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as refused:
            begun = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                refused.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert refused.recv(100) == b""
            assert time.monotonic() - begun < 1.0
        for conn in waiting:
            assert conn.recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        for conn in waiting:
            conn.close()
    assert timed_health(api.url) < 1.0


@pytest.mark.slow
def test_the_api_raises_its_soft_file_limit_or_refuses_to_start(
    start_service: Start, tmp_path: Path
) -> None:
    # MAX_CONNECTIONS=1000 (the default) needs 2 x 1000 + 511 (backlog) + 256 = 2767 files.
    needed = 2 * constants.API_MAX_CONNECTIONS + constants.LISTEN_BACKLOG
    needed += constants.FILES_RESERVE
    api = start_service(preexec_fn=file_limit(300, 4000))
    assert limits(api.process.pid) == (str(needed), "4000")
    assert "open-file limit raised from 300 to 2767" in api.output

    refused = start_service(wait=False, preexec_fn=file_limit(1000, 1000))
    assert refused.wait(20) == constants.EXIT_CONFIG
    assert "MAX_CONNECTIONS=1000: needs 2767 open files" in refused.output
    assert "hard limit of 1000" in refused.output
    assert "Uvicorn running" not in refused.output  # no port was bound


# --- The worker's health server --------------------------------------------------------------
@pytest.mark.slow
def test_the_worker_health_server_bounds_its_connections_and_threads(
    start_service: Start,
) -> None:
    """500 connections that never complete a request: the health server keeps 32
    (WORKER_MAX_CONNECTIONS), a thread each, and answers /health at once. The standard
    library's server queued 5 (so the connects stalled for seconds), and held all 500 open,
    a thread each, for ever."""
    worker = start_service(worker=True, WORKER_CONCURRENCY="1")
    pid = worker.process.pid
    threads_before, files_before = threads(pid), open_files(pid)
    with idle_sockets(worker.port, 500) as conns:
        seconds = [timed_health(worker.url) for _ in range(5)]
        assert max(seconds) < 1.0, seconds
        limit = constants.WORKER_MAX_CONNECTIONS
        assert threads(pid) <= threads_before + limit + 2
        assert open_files(pid) <= files_before + limit + 2
        wait_for(lambda: closed_by_server(conns) >= 500 - limit)
    print(f"worker GET /health with 500 idle sockets open: {max(seconds) * 1000:.1f} ms at most")
    assert "MAX_CONNECTIONS (32) reached" in worker.output


@pytest.mark.slow
def test_the_worker_health_server_drops_a_request_head_that_does_not_come(
    start_service: Start,
) -> None:
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", REQUEST_HEADER_TIMEOUT="1")
    with contextlib.ExitStack() as stack:
        silent = stack.enter_context(socket.create_connection(("127.0.0.1", worker.port), 5))
        trickling = stack.enter_context(socket.create_connection(("127.0.0.1", worker.port), 5))
        begun = time.monotonic()
        for byte in b"GET /health HTTP/1.0\r\n":  # a byte every 0.1 s: past the deadline
            if time.monotonic() - begun > 1.5:
                break
            with contextlib.suppress(OSError):
                trickling.send(bytes([byte]))
            time.sleep(0.1)
        for conn in (silent, trickling):
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(100) == b""  # closed, nothing answered
            assert time.monotonic() - begun < 3.0
    # A head over MAX_HEAD_BYTES is not read to its end either.
    status, _, _ = http("GET", f"{worker.url}/health", headers={"X-Filler": "a" * 8000})
    assert status == 200
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as huge:
        with contextlib.suppress(OSError):
            huge.sendall(b"GET /health HTTP/1.0\r\nX-Filler: " + b"a" * 100_000)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            answer = huge.recv(100)
        assert not answer.startswith(b"HTTP/1.0 200")


@pytest.mark.slow
def test_the_worker_raises_its_soft_file_limit_or_refuses_to_start(start_service: Start) -> None:
    needed = constants.WORKER_MAX_CONNECTIONS + constants.FILES_RESERVE  # 288
    worker = start_service(worker=True, WORKER_CONCURRENCY="1", preexec_fn=file_limit(100, 1000))
    assert limits(worker.process.pid) == (str(needed), "1000")
    refused = start_service(
        worker=True, wait=False, MAX_CONNECTIONS="900", preexec_fn=file_limit(1000, 1000)
    )
    assert refused.wait(20) == constants.EXIT_CONFIG
    assert "MAX_CONNECTIONS=900: needs 1156 open files" in refused.output
