"""Job encoding: what we write is what RQ reads, and nothing is ever unpickled."""

from __future__ import annotations

import pickle
import zlib

import fakeredis
import orjson
import pytest
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.config import constants
from service.jobs import records
from service.store.publish import publish_now


def published(batch: list[records.NewJob]) -> fakeredis.FakeRedis:
    """Run the real PUBLISH script (fakeredis runs Lua, without Redis 7's script flags) and
    return the Redis it wrote."""
    client = fakeredis.FakeRedis()
    publish_now(client, batch, 1.8e9)
    return client


def test_data_is_rqs_layout_and_round_trips() -> None:
    job = records.NewJob("j1", "email.send", "mail", {"to": "a@b.c"}, 30, 0)
    data = published([job]).hget("rq:job:j1", "data")
    assert data == b'["email.send",null,[{"to":"a@b.c"}],{}]'
    assert records.decode_data(data) == ("email.send", {"to": "a@b.c"})
    assert records.decode_data(zlib.compress(data)) == (
        "email.send",
        {"to": "a@b.c"},
    )  # as RQ saves


def test_pickled_data_is_refused() -> None:
    data = zlib.compress(pickle.dumps(("os.system", None, ["true"], {})))
    with pytest.raises(orjson.JSONDecodeError):
        records.decode_data(data)


def test_rq_reads_the_jobs_we_publish() -> None:
    batch = [
        records.NewJob(records.new_id(), "echo", "app-queue", {"x": n}, 30, 2) for n in range(3)
    ]
    client = published(batch)
    assert Queue("app-queue", connection=client).job_ids == [job.id for job in batch]
    assert [q.name for q in Queue.all(connection=client)] == ["app-queue"]
    fetched = Job.fetch(batch[1].id, connection=client, serializer=JSONSerializer)
    assert fetched.get_status() == "queued"
    assert (fetched.func_name, fetched.args, fetched.timeout) == ("echo", [{"x": 1}], 30)
    assert (fetched.retries_left, fetched.result_ttl) == (2, constants.RESULT_TTL)
    assert fetched.enqueued_at is not None
    assert fetched.enqueued_at.year == 2027
    assert client.llen(constants.wake_key("app-queue")) == 3  # one wake-up token per job


def test_result_entries_decode() -> None:
    exc = records.encode_exc_string("T\nE: boom\n")
    entry = records.decode_result_entry(
        {
            b"type": b"4",
            b"worker_name": b"w",
            b"reason": b"timeout",
            b"exc_string": exc,
            b"execution_started_at": b"0",
        }
    )
    assert entry == {
        "outcome": "retried",
        "reason": "timeout",
        "worker": "w",
        "started_at": "1970-01-01T00:00:00.000000Z",
        "ended_at": None,
        "error": "T\nE: boom\n",
    }
    assert records.error_summary(entry["error"]) == "E: boom"
    ok = records.decode_result_entry(
        {b"type": b"1", b"return_value": records.encode_return_value(b"[1]")}
    )
    assert (ok["outcome"], ok["result"]) == ("finished", [1])
    stopped = records.decode_result_entry({b"type": b"3", b"reason": b"interrupted"})
    assert stopped["outcome"] == "interrupted"


def test_utc_iso_is_rqs_format() -> None:
    assert records.utc_iso(0) == "1970-01-01T00:00:00.000000Z"


def test_ids_are_uuid7_and_tell_their_age() -> None:
    first, second = records.new_id(1_800_000_000.0), records.new_id(1_800_000_000.5)
    assert len(first) == 32 and first[12] == "7" and first[16] in "89ab"
    assert first < second  # time-ordered
    assert records.id_created_at(first) == 1_800_000_000.0
    assert records.id_created_at("f" * 32) is None
    assert records.id_created_at("short") is None
