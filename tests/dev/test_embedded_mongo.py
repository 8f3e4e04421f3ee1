"""The private MongoDB stand-in (nx-27017) used by dev mode and the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import ServerSelectionTimeoutError

from service.dev.embedded_mongo import EmbeddedMongo

Client = MongoClient[dict[str, Any]]


@pytest.fixture
def mongo_server() -> Iterator[Callable[..., EmbeddedMongo]]:
    """Starts an EmbeddedMongo with the given options; stops every one at teardown."""
    servers: list[EmbeddedMongo] = []

    def start(**options: Any) -> EmbeddedMongo:
        server = EmbeddedMongo(**options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def connect(server: EmbeddedMongo) -> Client:
    return MongoClient(server.uri, serverSelectionTimeoutMS=2000)


def test_starts_a_server_pymongo_can_ping_and_stops_it(
    mongo_server: Callable[..., EmbeddedMongo],
) -> None:
    server = mongo_server(database="history")
    with connect(server) as client:
        assert client.admin.command("ping")["ok"] == 1
        assert client.get_default_database().name == "history"
    server.stop()
    assert server.pid is None and server.log_path is None
    stopped: Client = MongoClient(server.uri, serverSelectionTimeoutMS=300)
    with stopped, pytest.raises(ServerSelectionTimeoutError):
        stopped.admin.command("ping")


def test_in_memory_by_default_so_a_restart_empties_it(
    mongo_server: Callable[..., EmbeddedMongo],
) -> None:
    server = mongo_server()
    port, pid = server.port, server.pid
    with connect(server) as client:
        client.app.jobs.insert_one({"_id": "a"})
        server.restart()
        assert (server.port, server.path) == (port, None)
        assert server.pid != pid
        assert client.app.jobs.count_documents({}) == 0


def test_a_file_database_survives_restart(
    mongo_server: Callable[..., EmbeddedMongo], tmp_path: Path
) -> None:
    path = tmp_path / "history.db"
    server = mongo_server(path=str(path))
    with connect(server) as client:
        client.app.jobs.insert_one({"_id": "a", "status": "finished"})
        server.restart()
        # The same client reconnects to the new process on the same port.
        assert client.app.jobs.find_one({"_id": "a"}) == {"_id": "a", "status": "finished"}
    server.stop()
    assert path.exists()


def test_updates_keep_datetimes_and_subdocuments(
    mongo_server: Callable[..., EmbeddedMongo],
) -> None:
    """Unpatched, nx-27017 stores these as "2026-01-10 12:00:00" and '{"e":"done"}'."""
    at = datetime(2026, 1, 10, 12, 0, 0, 123000)
    with connect(mongo_server()) as client:
        jobs = client.app.jobs
        jobs.insert_one({"_id": "a", "updated_at": datetime(2026, 1, 1), "events": []})
        jobs.update_one(
            {"_id": "a"},
            {
                "$set": {"finished_at": at},
                "$max": {"updated_at": at},
                "$push": {"events": {"e": 1}},
            },
        )
        assert jobs.find_one({"_id": "a"}) == {
            "_id": "a",
            "updated_at": at,
            "finished_at": at,
            "events": [{"e": 1}],
        }


def test_a_server_that_exits_at_start_fails_clearly() -> None:
    server = EmbeddedMongo(extra_args=("--journal-mode", "NONSENSE"))
    with pytest.raises(RuntimeError, match=r"nx-27017 exited with 2: .*invalid choice"):
        server.start()
    assert server.pid is None and server.log_path is None
