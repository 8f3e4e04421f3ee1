"""Job encoding: what we write is what RQ reads, and nothing is ever unpickled."""

from __future__ import annotations

import pickle
import zlib

import fakeredis
import orjson
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from service import jobs


def test_data_round_trips_and_matches_rqs_layout() -> None:
    data = jobs.encode_data("email.send", {"to": "a@b.c"})
    assert jobs.decode_data(data) == ("email.send", {"to": "a@b.c"})
    assert zlib.decompress(data) == b'["email.send",null,[{"to":"a@b.c"}],{}]'
    assert jobs.decode_data(b'["noop",null,[{}],{}]') == ("noop", {})  # uncompressed, as RQ allows


def test_pickled_data_is_refused() -> None:
    data = zlib.compress(pickle.dumps(("os.system", None, ["true"], {})))
    with pytest.raises(orjson.JSONDecodeError):
        jobs.decode_data(data)


def test_rq_reads_a_job_hash_we_write() -> None:
    client = fakeredis.FakeRedis()
    job = jobs.NewJob(jobs.new_id(), "echo", "app-queue", {"x": 1}, 30, 2)
    client.hset(f"rq:job:{job.id}", mapping=job.fields(1_800_000_000.0))
    fetched = Job.fetch(job.id, connection=client, serializer=JSONSerializer)
    assert fetched.get_status() == "queued"
    assert (fetched.func_name, fetched.args, fetched.timeout) == ("echo", [{"x": 1}], 30)
    assert fetched.retries_left == 2
    assert fetched.enqueued_at is not None and fetched.enqueued_at.year == 2027


def test_result_entries_decode() -> None:
    entry = jobs.decode_result_entry(
        {b"type": b"2", b"worker_name": b"w", b"exc_string": jobs.encode_exc_string("T\nE: boom\n")}
    )
    assert entry == {"type": 2, "worker": "w", "error": "T\nE: boom\n"}
    assert jobs.error_summary(entry["error"]) == "E: boom"
    ok = jobs.decode_result_entry({b"type": b"1", b"return_value": jobs.encode_return_value([1])})
    assert ok["result"] == [1]


def test_utc_iso_is_rqs_format() -> None:
    assert jobs.utc_iso(0) == "1970-01-01T00:00:00.000000Z"
