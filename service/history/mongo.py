"""MongoDB: the application's database (handlers get it as `ctx.db`) and the job history.

One client per process, created after any fork (pymongo clients are not fork-safe), with short
timeouts so a dead MongoDB is a clear error within seconds, never a hang.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import PyMongoError

from service.config.settings import Secret

HISTORY_COLLECTION = "jobs"
TIMEOUTS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 2000,
    "connectTimeoutMS": 2000,
    "socketTimeoutMS": 10000,
    "appname": "job-service",
}


def connect(uri: Secret) -> Database[dict[str, Any]]:
    """The database named in MONGODB_URI, on a new client (connects lazily)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri.reveal(), **TIMEOUTS)
    return client.get_default_database()


def connect_async(uri: Secret) -> AsyncDatabase[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri.reveal(), **TIMEOUTS)
    return client.get_default_database()


def ping(db: Database[dict[str, Any]]) -> bool:
    try:
        db.command("ping")
    except PyMongoError:
        return False
    return True


async def ping_async(db: AsyncDatabase[dict[str, Any]]) -> bool:
    try:
        await db.command("ping")
    except PyMongoError:
        return False
    return True


def ensure_indexes(db: Database[dict[str, Any]], ttl_days: int) -> None:
    """Idempotent. Queries sort by `updated_at`; the TTL index removes old history.

    No index names are relied on (MongoDB stand-ins name indexes their own way)."""
    jobs = db[HISTORY_COLLECTION]
    jobs.create_index([("status", ASCENDING), ("updated_at", DESCENDING)])
    jobs.create_index([("type", ASCENDING), ("updated_at", DESCENDING)])
    jobs.create_index([("updated_at", ASCENDING)], expireAfterSeconds=ttl_days * 24 * 3600)
